"""The steps around the registered filters: checking what was read, unicode repair, and
dropping the duplicates the dedup stages found (HTML extraction is in html.py, PII masking in
pii.py)."""
from __future__ import annotations

from llmtrain_prep.document import Document

from .steps import BaseFilter


class ReadCheck(BaseFilter):
    """Drops empty documents and bytes that are not text (both counted as bad input)."""

    name = "read"
    sample_chars = 2000

    def bad_input_key(self, reason):
        return reason

    def filter(self, doc: Document):
        from .text import looks_binary

        if not doc.text.strip():
            return "empty"
        if looks_binary(doc.text, self.cfg.max_control_char_ratio):
            return "binary"
        return True


class UnicodeFix(BaseFilter):
    """ftfy's mojibake repair and a normal form (config ``unicode``)."""

    name = "unicode"

    def filter(self, doc: Document):
        from .text import fix_unicode

        doc.text = fix_unicode(doc.text, self.cfg.fix, self.cfg.normalization).strip()
        return True if doc.text else "empty"


class DuplicateRemoval(BaseFilter):
    """Drops the documents whose positions in the shard the clusters stage listed."""

    def __init__(self, name: str, positions, max_samples: int = 100):
        super().__init__(None, max_samples)
        self.name = name
        self.positions = set(int(i) for i in positions)

    def filter(self, doc: Document):
        return "duplicate" if doc.pos in self.positions else True
