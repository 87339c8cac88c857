"""Where the project's own files are: the project folder (configs/, ds_configs/, data/sample/)
and the user cache for prepared data."""
from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The project folder that holds configs/, ds_configs/ and data/sample/: $LLMTRAIN_HOME (the
    launcher scripts set it to their own checkout), else the source checkout this package runs
    from (an editable install), else the current folder."""
    if os.environ.get("LLMTRAIN_HOME"):
        return Path(os.environ["LLMTRAIN_HOME"]).resolve()
    source = Path(__file__).resolve().parents[2]
    if (source / "configs" / "tiny.yaml").is_file():
        return source
    return Path.cwd()


REPO_ROOT = project_root()
SAMPLE_CORPUS = REPO_ROOT / "data" / "sample" / "corpus.jsonl.gz"  # the bundled pretraining corpus


def cache_root() -> Path:
    """Where prepared data goes: $LLMTRAIN_CACHE, else ~/.cache/llmtrain (never the installed
    package's folder)."""
    return Path(os.environ.get("LLMTRAIN_CACHE") or Path.home() / ".cache" / "llmtrain")
