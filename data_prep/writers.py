"""Writers of the cleaned documents: JSON Lines through zstd, under a temporary name until
complete (and the reader of what they write)."""
from __future__ import annotations

import io
import json
import os


class ZstJsonlWriter:
    """Write JSON lines to ``path`` through zstd, under a temporary name until `commit`."""

    def __init__(self, path: str, level: int = 3):
        import zstandard

        self.path = path
        self.tmp = f"{path}.tmp-{os.getpid()}"
        self._fh = open(self.tmp, "wb")
        self._zw = zstandard.ZstdCompressor(level=level).stream_writer(self._fh, closefd=False)

    def write(self, obj: dict) -> None:
        self._zw.write(json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n")

    def commit(self) -> None:
        self._zw.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.chmod(self.tmp, 0o644)
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self._zw.close()
            self._fh.close()
        finally:
            if os.path.exists(self.tmp):
                os.remove(self.tmp)


def iter_zst_jsonl(path: str):
    """The objects of a JSON Lines file written by `ZstJsonlWriter`."""
    import zstandard

    with open(path, "rb") as fh:
        stream = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(fh))
        for line in stream:
            yield json.loads(line)
