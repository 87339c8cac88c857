"""The progress line of a tokenising task: documents and tokens per second, and an ETA from
the share of the input read."""
from __future__ import annotations

import time

# Rough uncompressed-characters per on-disk byte, for the ETA until a file has been read.
_RATIO_GUESS = {".gz": 3.0, ".zst": 3.5}


class Progress:
    def __init__(self, every: float, total_bytes: int, quiet: bool):
        self.every, self.total_bytes, self.quiet = every, max(total_bytes, 1), quiet
        self.start = self.last = time.time()
        self.docs = self.tokens = 0
        self.done_bytes = 0  # on-disk bytes of finished files
        self.done_chars = 0  # characters read from finished files
        self.cur_chars = 0  # characters read from the current file
        self.cur_suffix = ""

    def _fraction(self) -> float:
        if self.done_bytes and self.done_chars:
            ratio = self.done_chars / self.done_bytes
        else:
            ratio = _RATIO_GUESS.get(self.cur_suffix, 1.0)
        return min(1.0, (self.done_bytes + self.cur_chars / ratio) / self.total_bytes)

    def file_done(self, nbytes: int) -> None:
        self.done_bytes += nbytes
        self.done_chars += self.cur_chars
        self.cur_chars = 0

    def maybe_print(self, force: bool = False) -> None:
        now = time.time()
        if self.quiet or not (force or (self.every and now - self.last >= self.every)):
            return
        self.last = now
        dt = max(now - self.start, 1e-9)
        frac = self._fraction()
        eta = f", ETA {dt * (1 - frac) / frac:.0f} s" if 0 < frac < 1 else ""
        print(f"tokenize_corpus: {self.docs:,} docs ({self.docs / dt:,.0f} docs/s), {self.tokens:,} tokens "
              f"({self.tokens / dt:,.0f} tokens/s), ~{100 * frac:.0f}% of input{eta}", flush=True)
