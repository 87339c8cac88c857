"""Rebuild data/sample/web.warc.gz: a small raw crawl for the README's worked example.

HTTP response records (status 200, text/html) of the tutorial, HOWTO, FAQ and language
reference pages of the Python 3.11 documentation from the Debian package python3.11-doc (PSF
License v2; see data/sample/NOTICE), raw HTML with navigation and all, addressed as their
docs.python.org URLs. Two pages appear twice, as crawls often have them, so dedup has work.

    apt-get install python3.11-doc && pip install warcio && python data_prep/make_sample_warc.py
"""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path

HTML = Path("/usr/share/doc/python3.11/html")
OUT = Path(__file__).resolve().parents[1] / "data" / "sample" / "web.warc.gz"
SECTIONS = ("tutorial", "howto", "faq", "reference")


def main() -> int:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    if not HTML.is_dir():
        print(f"error: {HTML} not found; apt-get install python3.11-doc", file=sys.stderr)
        return 2
    pages = [p for sec in SECTIONS for p in sorted((HTML / sec).glob("*.html")) if p.name != "index.html"]
    pages += pages[:2]  # two pages crawled twice
    tmp = OUT.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        w = WARCWriter(fh, gzip=True)
        for p in pages:
            body = p.read_bytes()
            uri = f"https://docs.python.org/3.11/{p.relative_to(HTML)}"
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                                  ("Content-Length", str(len(body)))], protocol="HTTP/1.1")
            rec = w.create_warc_record(uri, "response", payload=io.BytesIO(body), http_headers=headers,
                                       warc_headers_dict={"WARC-Date": "2026-11-29T00:00:00Z"})
            w.write_record(rec)
    os.replace(tmp, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB, {len(pages)} records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
