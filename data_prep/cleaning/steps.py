"""The pieces a cleaning pipeline is made of: `PipelineStep`, `BaseFilter` and the registry of
filters, over the one `Document` type (data_prep/document.py).

Learnt from datatrove's ``PipelineStep`` / ``BaseFilter``: a step takes an iterator of
documents and yields documents; a filter only decides (``filter(doc)`` returns True to keep
the document, or a short reason string to drop it, and may shorten ``doc.text``), while the
counting (documents and characters in and out, removals by reason), the samples of removed
documents and the timing happen once, here in the base class.

A new filter is one class plus one YAML section::

    @register
    class NoShouting(BaseFilter):
        name = "no_shouting"                  # the YAML section and the stats.json stage

        @dataclass
        class Config:
            enabled: bool = True
            max_upper_ratio: Optional[float] = 0.5

        def filter(self, doc):
            upper = sum(c.isupper() for c in doc.text) / max(1, len(doc.text))
            return True if upper <= self.cfg.max_upper_ratio else "too_much_upper_case"

Registered filters run in the order they are registered (data_prep/cleaning/filters.py).
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from llmtrain_prep.document import Document


def new_stage_stats() -> dict:
    return {"docs_in": 0, "docs_out": 0, "chars_in": 0, "chars_out": 0, "removed": {}, "seconds": 0.0}


class PipelineStep:
    """A step of the pipeline. ``name`` is its stage name in stats.json and removed/."""

    name = "step"
    sample_chars = 20_000  # characters of a removed document kept in its sample

    def __init__(self, max_samples: int = 100):
        self.stats = new_stage_stats()
        self.samples: list[dict] = []
        self.max_samples = max_samples
        self.bad_input: dict[str, int] = {}

    def run(self, docs: Iterable[Document]) -> Iterator[Document]:  # pragma: no cover
        raise NotImplementedError

    def bad_input_key(self, reason: str) -> str | None:
        """The stats.json ``bad_input`` key a removal reason also counts under (None: not bad input)."""
        return None

    def drop(self, doc: Document, reason: str, text: str) -> None:
        """Count a removed document under ``reason`` and keep it as a sample while there is room."""
        removed = self.stats["removed"]
        removed[reason] = removed.get(reason, 0) + 1
        key = self.bad_input_key(reason)
        if key is not None:
            self.bad_input[key] = self.bad_input.get(key, 0) + 1
        if len(self.samples) < self.max_samples:
            self.samples.append({"id": doc.id, "source": doc.source, "reason": reason,
                                 "text": text[: self.sample_chars]})


class BaseFilter(PipelineStep):
    """A step that keeps or drops each document. Subclasses implement ``filter`` only; a
    filter with settings declares them as a nested ``Config`` dataclass (its YAML section)."""

    Config = None

    def __init__(self, config=None, max_samples: int = 100, **kwargs):
        super().__init__(max_samples)
        if config is None and self.Config is not None:
            config = self.Config(**kwargs)
        elif kwargs:
            raise TypeError(f"{type(self).__name__}: give a config or keyword settings, not both")
        self.cfg = config

    def filter(self, doc: Document) -> bool | str:  # pragma: no cover
        """True keeps ``doc`` (whose text the filter may have changed); a string drops it, naming why."""
        raise NotImplementedError

    def run(self, docs: Iterable[Document]) -> Iterator[Document]:
        st = self.stats
        clock = time.perf_counter
        for doc in docs:
            text = doc.text
            st["docs_in"] += 1
            st["chars_in"] += len(text)
            t = clock()
            verdict = self.filter(doc)
            st["seconds"] += clock() - t
            if verdict is True:
                st["docs_out"] += 1
                st["chars_out"] += len(doc.text)
                yield doc
            else:
                self.drop(doc, verdict, text)

    def __call__(self, text: str, words: list[str] | None = None) -> tuple[bool, str | None, str]:
        """Judge one text outside a pipeline: (keep, reason or None, the text after the filter)."""
        doc = Document(text, "")
        if words is not None:
            doc._words, doc._words_of = words, text
        verdict = self.filter(doc)
        return (True, None, doc.text) if verdict is True else (False, verdict, doc.text)


FILTERS: dict[str, type[BaseFilter]] = {}


def register(cls: type[BaseFilter]) -> type[BaseFilter]:
    """Add a filter class to the registry under its ``name`` (its YAML section)."""
    if cls.name in FILTERS and FILTERS[cls.name] is not cls:
        raise ValueError(f"two filters are registered as '{cls.name}'; give one another name")
    if cls.Config is None or "enabled" not in getattr(cls.Config, "__dataclass_fields__", {}):
        raise ValueError(f"filter '{cls.name}' needs a Config dataclass with an `enabled` field")
    FILTERS[cls.name] = cls
    return cls


def chain(docs: Iterable[Document], steps: list[PipelineStep]) -> Iterator[Document]:
    """The documents that come out of ``steps`` applied in order."""
    for step in steps:
        docs = step.run(docs)
    return iter(docs)
