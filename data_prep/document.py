"""The one type that travels between the readers, the cleaning steps and the tokenizer.

A reader (data_prep/readers/) turns each record of an input into a `Document` through its
adapter; the cleaning steps (data_prep/cleaning/steps.py) read and change ``text`` and add
``meta``; the cleaned shards store `to_json`; the tokenizer encodes ``text`` (and, for
prompt/response records, ``meta["response"]``).
"""
from __future__ import annotations


class Document:
    """One document: its text, id, source (the input it came from), whether the text is HTML,
    and metadata (fields the adapter carried over, and what the steps add: ``language``,
    ``language_score``). ``words`` is the text split into words, computed once per text and
    shared by the filters that need it. ``pos`` is the document's position in its shard (-1 when
    not known)."""

    __slots__ = ("text", "id", "source", "html", "meta", "pos", "_words", "_words_of")

    def __init__(self, text: str, id: str, source: str = "", html: bool = False, meta: dict | None = None):
        self.text = text
        self.id = id
        self.source = source
        self.html = html
        self.meta = {} if meta is None else meta
        self.pos = -1
        self._words_of = None
        self._words: list[str] = []

    @property
    def words(self) -> list[str]:
        if self._words_of is not self.text:
            from llmtrain_prep.cleaning.text import split_words

            self._words, self._words_of = split_words(self.text), self.text
        return self._words

    @classmethod
    def from_json(cls, d: dict) -> Document:
        """A document as `to_json` wrote it (a line of a cleaned shard)."""
        meta = {k: v for k, v in d.items() if k not in ("id", "text", "source")}
        return cls(d["text"], d["id"], d.get("source", ""), False, meta)

    def to_json(self) -> dict:
        """The line of a cleaned shard: id, text, source, then the metadata."""
        return {"id": self.id, "text": self.text, "source": self.source, **self.meta}

    def to_record(self) -> dict:
        """A plain dict for scripts: id, text, source, ``html: True`` for an HTML page, and the metadata."""
        rec = {"id": self.id, "text": self.text, "source": self.source}
        if self.html:
            rec["html"] = True
        rec.update(self.meta)
        return rec

    def __repr__(self) -> str:
        return f"Document(id={self.id!r}, source={self.source!r}, {len(self.text)} chars)"
