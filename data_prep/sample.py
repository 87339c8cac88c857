"""The bundled sample corpus, prepared for training on first use: a BPE tokenizer trained on it
and its tokens written into the user cache (``$LLMTRAIN_CACHE``, else ``~/.cache/llmtrain``),
keyed by everything that changes them. The launcher calls this when data.prefix is unset; the
library never prepares data itself."""
from __future__ import annotations

import fcntl
from pathlib import Path

from llmtrain.core.errors import ConfigError
from llmtrain.core.files import sha256_file
from llmtrain.core.paths import SAMPLE_CORPUS, cache_root


def sample_prefix(vocab_size: int, valid_fraction: float, corpus: Path = SAMPLE_CORPUS) -> Path:
    """The prefix of the prepared bundled corpus, keyed by everything that changes it: the
    vocabulary size, the valid fraction and the corpus file's hash."""
    if not corpus.is_file():
        raise ConfigError(f"{corpus}: the bundled sample corpus is missing; run from the project folder (or set "
                          f"LLMTRAIN_HOME to it), or set data.prefix to your own token data")
    key = f"sample_v{vocab_size}_valid{valid_fraction:g}_{sha256_file(corpus)[:12]}"
    return cache_root() / key / "sample"


def prepare_sample_data(cfg, rank: int) -> str:
    """PREFIX of the bundled corpus tokenised with cfg.data.sample_vocab_size and
    cfg.data.valid_fraction, made now if not done yet (one process does it under a file lock;
    the others wait and reuse it)."""
    from llmtrain_prep.tokenize_corpus import tokenize_corpus
    from llmtrain_prep.train_tokenizer import train_tokenizer

    prefix = sample_prefix(cfg.data.sample_vocab_size, cfg.data.valid_fraction)
    manifest = Path(f"{prefix}_manifest.json")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with open(prefix.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not manifest.exists():
            tok = prefix.parent / "tokenizer.json"
            print(f"[rank {rank}] preparing the bundled corpus {SAMPLE_CORPUS} -> {prefix}_*.bin/.idx", flush=True)
            if not tok.exists():
                train_tokenizer([str(SAMPLE_CORPUS)], cfg.data.sample_vocab_size, str(tok))
            tokenize_corpus([str(SAMPLE_CORPUS)], str(tok), str(prefix), valid_fraction=cfg.data.valid_fraction)
    return str(prefix)
