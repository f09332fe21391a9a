"""Rows to driver values, column by column: the bulk-write hot path's parameter processing.

SQLAlchemy's Core insert processes every parameter of every row in Python; at thousands of
events a second that cost rivals the database's. Here each column's bind processor (the same
one SQLAlchemy would use, so stored values are identical) runs once per value, and the backend
sends the columns to the driver as one statement of its own (relay/store/sql/).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from sqlalchemy import JSON, Table
from sqlalchemy.engine import Dialect


def _json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode()


class Binder:
    def __init__(self, table: Table, columns: Sequence[str], dialect: Dialect) -> None:
        self.columns = list(columns)
        # JSON with msgspec, several times faster than the dialect's json.dumps: what bulk
        # writes put there is ours (an event's transport details), plain JSON types only; the
        # statements cast that text back where the column wants it
        self.processors: list[Callable[[Any], Any] | None] = [
            _json_text if isinstance(col.type, JSON) else col.type._cached_bind_processor(dialect)
            for col in (table.c[name] for name in columns)
        ]

    def prepare(self, rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
        """Rows (tuples in column order, Python values) → driver values, one list per column.

        Pure Python, so callers do it before taking the database: on SQLite the transaction
        runs on the writer thread, which should hold the GIL as little as possible.
        """
        columns: list[list[Any]] = []
        for column, proc in zip(zip(*rows, strict=True), self.processors, strict=True):
            if proc is None:
                columns.append(list(column))
            elif all(value is column[0] for value in column):  # e.g. one "now" for all rows
                columns.append([proc(column[0])] * len(column))
            else:
                columns.append([proc(value) for value in column])
        return columns
