"""WARC and WET: ``.warc``, ``.warc.gz``, ``.wet``, ``.wet.gz``. ``response`` records (HTTP
responses: the HTML payload, a document with ``html=True``; only text/html and application/xhtml
with status 200) and ``conversion`` records (WET plain text); the id is the record's
WARC-Target-URI."""
from __future__ import annotations

import os
from collections.abc import Iterator

from llmtrain_prep.document import Document

from .base import CHUNK, InputError, Reader, open_binary

_HTML_TYPES = (b"text/html", b"application/xhtml")


def _parse_headers(lines: list[bytes]) -> dict[str, str]:
    out: dict[str, str] = {}
    for ln in lines:
        k, sep, v = ln.partition(b":")
        if sep:
            out[k.strip().decode("latin-1").lower()] = v.strip().decode("latin-1")
    return out


def _charset(content_type: str) -> str | None:
    for part in content_type.split(";")[1:]:
        k, _, v = part.strip().partition("=")
        if k.strip().lower() == "charset" and v:
            return v.strip().strip("'\"")
    return None


def decode_html(payload: bytes, content_type: str = "") -> str:
    """Bytes of an HTML page → str: the HTTP charset if valid, else UTF-8, else the encoding
    resiliparse detects (or cp1252 with replacement)."""
    cs = _charset(content_type)
    if cs:
        try:
            return payload.decode(cs)
        except (LookupError, UnicodeDecodeError):
            pass
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        from resiliparse.parse.encoding import bytes_to_str, detect_encoding

        return bytes_to_str(payload, detect_encoding(payload))
    except ImportError:  # pragma: no cover
        return payload.decode("cp1252", errors="replace")


def dechunk(data: bytes) -> bytes:
    """The body of an HTTP payload sent with ``Transfer-Encoding: chunked``."""
    out, pos = [], 0
    while pos < len(data):
        nl = data.find(b"\r\n", pos)
        if nl < 0:
            break
        try:
            size = int(data[pos:nl].split(b";")[0], 16)
        except ValueError:
            return data  # not really chunked
        if size == 0:
            break
        out.append(data[nl + 2:nl + 2 + size])
        pos = nl + 2 + size + 2
    return b"".join(out)


class WarcReader(Reader):
    """Records one at a time. Problems: ``malformed_warc`` (no version line or Content-Length:
    reading stops), ``oversized`` (a record over max_doc_bytes, skipped unread), ``invalid_utf8``
    (a WET record), ``truncated``; other record types, other content types and statuses are
    counted under ``warc_skipped`` without a warning."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.records = 0  # records read so far, for the messages

    def check(self, path: str) -> None:
        """Nothing to check before reading: a WARC has no fields to name."""

    def cut_message(self, path: str, e: BaseException) -> str:
        return (f"{path}: truncated or corrupt WARC after {self.records} records ({type(e).__name__}: {e}); "
                f"earlier records kept")

    def _documents(self, path: str) -> Iterator[Document]:
        self.records = 0
        try:
            fh = open_binary(path)
        except OSError as e:
            raise InputError(f"{path}: cannot open ({e})") from None
        with fh:
            while True:
                line = fh.readline(65536)
                if not line:
                    return
                if not line.strip():
                    continue
                if not line.startswith(b"WARC/"):
                    self.problem("malformed_warc", f"{path}: record {self.records + 1}: expected a 'WARC/' version "
                                                   f"line, found {line[:40]!r}; stopping")
                    return
                headers = self._headers(fh)
                self.records += 1
                doc = self._record(fh, path, headers)
                if doc is not None:
                    yield doc

    @staticmethod
    def _headers(fh) -> dict[str, str]:
        lines = []
        while True:
            h = fh.readline(65536)
            if not h:
                raise EOFError("end of file inside WARC headers")
            if not h.strip():
                return _parse_headers(lines)
            lines.append(h)

    def _record(self, fh, path: str, headers: dict[str, str]) -> Document | None:
        """The document of one record (its headers read), or None when it is skipped."""
        nrec = self.records
        try:
            length = int(headers.get("content-length", ""))
        except ValueError:
            self.problem("malformed_warc", f"{path}: record {nrec}: no valid Content-Length; stopping")
            raise _Stop from None
        rtype = headers.get("warc-type", "")
        wanted = rtype in ("response", "conversion")
        if not wanted or length > self.max_doc_bytes:
            left = length  # skip the block without holding it
            while left > 0:
                chunk = fh.read(min(left, CHUNK))
                if not chunk:
                    raise EOFError("end of file inside a WARC record")
                left -= len(chunk)
            if wanted:
                self.count("oversized", f"{path}: record {nrec} larger than {self.max_doc_bytes} bytes; skipped")
            return None
        block = fh.read(length)
        if len(block) < length:
            raise EOFError(f"record {nrec} has {len(block)} of {length} bytes")
        uri = headers.get("warc-target-uri", "") or f"{os.path.basename(path)}:{nrec}"
        if rtype == "conversion":
            try:
                return Document(block.decode("utf-8"), uri, path)
            except UnicodeDecodeError:
                self.count("invalid_utf8", f"{path}: record {nrec} ({uri}): invalid UTF-8; skipped")
                return None
        return self._response(block, uri, path, headers.get("content-type", ""))

    def _response(self, block: bytes, uri: str, path: str, ctype: str) -> Document | None:
        """An HTTP response record: status line, headers, payload; HTML with status 200 only."""
        if "application/http" not in ctype and "msgtype=response" not in ctype and not block.startswith(b"HTTP/"):
            self.count("warc_skipped", "", warn=False)
            return None
        head, sep, payload = block.partition(b"\r\n\r\n")
        if not sep:
            head, sep, payload = block.partition(b"\n\n")
        status_line, _, rest = head.partition(b"\n")
        parts = status_line.split()
        http = _parse_headers(rest.split(b"\n"))
        http_ct = http.get("content-type", "").encode("latin-1", "replace").lower()
        if len(parts) < 2 or parts[1] != b"200" or not http_ct.startswith(_HTML_TYPES):
            self.count("warc_skipped", "", warn=False)
            return None
        if "chunked" in http.get("transfer-encoding", "").lower():
            payload = dechunk(payload)
        return Document(decode_html(payload, http.get("content-type", "")), uri, path, html=True)

    def read(self, path: str) -> Iterator[Document]:
        try:
            yield from super().read(path)
        except _Stop:
            return


class _Stop(Exception):
    """A record that makes the rest of the file unreadable (counted already): stop reading."""
