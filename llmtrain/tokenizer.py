"""The one place tokenizers are loaded: a tokenizer.json file, or a transformers folder holding
one, set up exactly as data_prep/tokenize_corpus.py encodes the training data (no special tokens
added; a literal end-of-document string inside a text is encoded as text)."""
from __future__ import annotations

from pathlib import Path

from llmtrain.core.errors import ConfigError

EOD_TOKEN = "<|endoftext|>"  # the default end-of-document token; --eod-token names another


def tokenizer_file(path: str | Path) -> Path:
    """The tokenizer.json at ``path``: the file itself, or a folder's tokenizer.json (a
    transformers model or tokenizer folder)."""
    p = Path(path)
    if p.is_dir():
        if (p / "tokenizer.json").is_file():
            return p / "tokenizer.json"
        raise ConfigError(f"{p}: folder has no tokenizer.json; pass the tokenizer.json itself or a transformers "
                          f"folder saved with a fast tokenizer (tokenizer.save_pretrained)")
    if not p.is_file():
        raise ConfigError(f"{p}: tokenizer not found; train one with python data_prep/train_tokenizer.py "
                          f"--input CORPUS --vocab-size N --output {p}")
    return p


def load_tokenizer(path: str | Path, eod_token: str | None = EOD_TOKEN):
    """(tokenizers.Tokenizer, id of ``eod_token``) from a tokenizer.json or a transformers folder;
    ConfigError (one line naming the file and the fix) when it is missing, unreadable or lacks the
    end-of-document token. ``eod_token=None``: do not look one up (the id returned is None)."""
    from tokenizers import Tokenizer

    f = tokenizer_file(path)
    try:
        tok = Tokenizer.from_file(str(f))
    except Exception as e:  # tokenizers raises a plain Exception on a bad file
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{f}: not a valid tokenizer.json ({first}); re-train it with "
                          f"python data_prep/train_tokenizer.py") from None
    eod = None
    if eod_token is not None:
        eod = tok.token_to_id(eod_token)
        if eod is None:
            raise ConfigError(f"{f}: has no {eod_token!r} token to end documents with; name the tokenizer's own "
                              f"end-of-document token with --eod-token (e.g. '<|end_of_text|>', '</s>')")
    tok.encode_special_tokens = True
    return tok, eod


def manifest_eod_token(manifests: list[dict]) -> str:
    """The end-of-document token the data was made with: the first manifest that records one
    (eod_token), else the default."""
    return next((str(m["eod_token"]) for m in manifests if m.get("eod_token")), EOD_TOKEN)


def manifest_eod_id(manifests: list[dict], token_to_id) -> int | None:
    """Its id: the first recorded eod_token_id, else ``token_to_id(manifest_eod_token(...))``
    (None when the tokenizer has no such token)."""
    for m in manifests:
        if m.get("eod_token_id") is not None:
            return int(m["eod_token_id"])
    return token_to_id(manifest_eod_token(manifests))

