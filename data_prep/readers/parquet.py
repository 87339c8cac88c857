"""Parquet: ``.parquet``, read one batch of rows (within a row group) at a time with pyarrow;
the adapter's columns only."""
from __future__ import annotations

import os
from collections.abc import Iterator

from llmtrain_prep.document import Document

from .base import InputError, first_line
from .table import TableReader


class ParquetReader(TableReader):
    cut_errors = (Exception,)  # pyarrow raises ArrowInvalid / OSError / ... for a corrupt file

    def __init__(self, *args, batch_rows: int = 1024, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_rows = batch_rows
        self.row = 0  # rows read so far, for the messages

    def cut_message(self, path: str, e: BaseException) -> str:
        return f"{path}: corrupt Parquet after {self.row} rows ({type(e).__name__}: {e}); earlier rows kept"

    def check(self, path: str) -> None:
        """The schema only: the columns are there and hold text."""
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(path)
        except Exception as e:
            raise InputError(f"{path}: not a readable Parquet file ({first_line(e)})") from None
        strict, self.strict = self.strict, True
        try:
            self.columns(path, schema.names, {n: schema.field(n).type for n in schema.names})
        finally:
            self.strict = strict

    def _documents(self, path: str) -> Iterator[Document]:
        import pyarrow.parquet as pq

        self.row = 0
        try:
            pf = pq.ParquetFile(path)
        except Exception as e:
            self.problem("unreadable_file", f"{path}: not a readable Parquet file ({e})")
            return
        schema = pf.schema_arrow
        cols = self.columns(path, schema.names, {n: schema.field(n).type for n in schema.names})
        if cols is None:
            return
        base = os.path.basename(path)
        for batch in pf.iter_batches(batch_size=self.batch_rows, columns=cols):
            n = batch.num_rows
            yield from self.rows(path, base, {c: batch.column(i).to_pylist() for i, c in enumerate(cols)}, self.row)
            self.row += n
