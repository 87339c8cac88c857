"""Plain text: ``.txt``, ``.txt.gz``, ``.txt.zst``; **one document per file** (a book, an
article), whose id is the file's path. Blank-line blocks stay paragraphs of that one document,
because the repetition and quality filters judge whole documents."""
from __future__ import annotations

from collections.abc import Iterator

from llmtrain_prep.document import Document

from .base import CHUNK, Reader, open_binary


class TextReader(Reader):
    """Read in chunks up to max_doc_bytes (larger: ``oversized``); ``invalid_utf8`` otherwise."""

    def check(self, path: str) -> None:
        """Nothing to check before reading: a text file has no fields to name."""

    def cut_message(self, path: str, e: BaseException) -> str:
        return f"{path}: truncated or corrupt file ({type(e).__name__}: {e})"

    def _documents(self, path: str) -> Iterator[Document]:
        parts, size = [], 0
        with open_binary(path) as fh:
            while True:
                chunk = fh.read(CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > self.max_doc_bytes:
                    self.problem("oversized", f"{path}: text file larger than {self.max_doc_bytes} bytes; skipped "
                                              f"(split it into files)")
                    return
                parts.append(chunk)
        try:
            text = b"".join(parts).decode("utf-8")
        except UnicodeDecodeError as e:
            self.problem("invalid_utf8", f"{path}: invalid UTF-8 at byte {e.start}; re-encode the file as UTF-8")
            return
        yield Document(text, path, path)
