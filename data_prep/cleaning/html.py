"""HTML → main-content plain text.

``resiliparse`` (default) is a C++ extractor with a main-content heuristic; on this
project's benchmark machine it ran ~17x faster than ``trafilatura`` (30 vs 1.7 MB/s of HTML
on the CPython HTML docs). ``trafilatura`` is the extractor FineWeb used and stays
available as ``html.extractor: trafilatura``.
"""
from __future__ import annotations


class HtmlExtractor:
    name = "html_extract"

    def __init__(self, extractor: str = "resiliparse", main_content: bool = True):
        if extractor not in ("resiliparse", "trafilatura"):
            raise ValueError(f"html.extractor: '{extractor}' is not one of resiliparse, trafilatura")
        self.extractor = extractor
        self.main_content = main_content
        if extractor == "resiliparse":
            from resiliparse.extract.html2text import extract_plain_text

            self._fn = lambda h: extract_plain_text(h, main_content=main_content, alt_texts=False, links=False,
                                                    form_fields=False, noscript=False)
        else:
            import trafilatura

            self._fn = lambda h: trafilatura.extract(h, include_comments=False, include_tables=False,
                                                     favor_precision=main_content) or ""

    def __call__(self, html: str) -> str:
        return self._fn(html).strip()
