"""What the readers of tables (Parquet, Hugging Face datasets) share: checking the columns the
adapter needs, and turning a batch of rows into documents."""
from __future__ import annotations

from collections.abc import Iterator

from llmtrain_prep.document import Document

from .base import Adapter, Reader


def is_text_type(t) -> bool:
    """True for an arrow string type or a datasets Value('string' / 'large_string')."""
    dtype = getattr(t, "dtype", None)
    if isinstance(dtype, str):  # datasets.Value
        return dtype in ("string", "large_string", "string_view")
    try:
        import pyarrow as pa

        return pa.types.is_string(t) or pa.types.is_large_string(t) or (
            hasattr(pa.types, "is_string_view") and pa.types.is_string_view(t))
    except TypeError:
        return False


class TableReader(Reader):
    """A reader of tables: the adapter's columns are checked against the schema before the
    first row; rows come in batches (lists per column)."""

    def columns(self, name: str, names: list[str], types: dict) -> list[str] | None:
        """The columns to read of a table with columns ``names`` (``types``: arrow types or
        datasets features, None when unknown); None after a problem when not strict."""
        a = self.adapter
        for f in a.required:
            if f.key not in names:
                self.problem("missing_text", f"{name}: no column '{f.key}' (columns: {', '.join(names)}); name the "
                                             f"text column with {f.flag}")
                return None
            t = types.get(f.key)
            if t is not None and not is_text_type(t):
                self.problem("missing_text", f"{name}: column '{f.key}' holds {t}, not text; name a string column "
                                             f"with {f.flag}")
                return None
        if a.id_key is not None and a.id_key not in names:
            self.problem("missing_id", f"{name}: no column '{a.id_key}' (--id-key; columns: {', '.join(names)}); "
                                       f"name an existing column or leave --id-key out")
            return None
        return a.columns(names)

    def rows(self, source: str, base: str, batch: dict[str, list], first_row: int, label: str | None = None
             ) -> Iterator[Document]:
        """The documents of a batch of rows (``batch``: column -> values; row numbers from
        ``first_row`` + 1); ``label`` names the input in messages (default: ``source``)."""
        a: Adapter = self.adapter
        required = a.required
        for k, rec in enumerate(_records(batch), first_row + 1):
            for f in required:
                t = rec[f.key]
                if not isinstance(t, str):
                    what = "empty" if t is None else type(t).__name__
                    self.problem("missing_text", f"{label or source}: row {k}: '{f.key}' is {what}, not text; fix "
                                                 f"that row or name another column with {f.flag}")
                    break
            else:
                yield a.document(rec, f"{base}:{k}", source)


def _records(batch: dict[str, list]) -> Iterator[dict]:
    """Rows of a batch given as columns."""
    keys = list(batch)
    for values in zip(*(batch[k] for k in keys)):
        yield dict(zip(keys, values))
