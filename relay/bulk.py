"""Many-row INSERTs in one statement through the driver: the group-commit hot path.

SQLAlchemy's Core insert processes every parameter of every row in Python; at thousands of
events a second that cost rivals the database's. Here each column's bind processor (the same
one SQLAlchemy would use, so stored values are identical) runs once per value, and the rows go
to the driver as one statement: a multi-row ``VALUES`` on SQLite, ``unnest`` of one array per
column on PostgreSQL (one prepared statement whatever the row count).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import JSON, Table
from sqlalchemy.engine import Connection, Dialect, Row

# bound parameters per SQLite statement (the compile-time default since 3.32, 999 before)
_SQLITE_MAX_VARIABLES = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999


class BulkInsert:
    def __init__(
        self,
        table: Table,
        columns: Sequence[str],
        dialect: Dialect,
        *,
        on_conflict: Sequence[str] = (),
        returning: Sequence[str] = (),
    ) -> None:
        self.postgresql = dialect.name == "postgresql"
        self.returning = bool(returning)
        cols = [table.c[name] for name in columns]
        self.processors: list[Callable[[Any], Any] | None] = [
            col.type._cached_bind_processor(dialect) for col in cols
        ]
        tail = ""
        if on_conflict:
            tail += f" ON CONFLICT ({', '.join(on_conflict)}) DO NOTHING"
        if returning:
            tail += f" RETURNING {', '.join(returning)}"
        head = f"INSERT INTO {table.name} ({', '.join(columns)})"
        if self.postgresql:
            # JSON travels as text (its bind processor serializes) and is cast back per row
            arrays = ", ".join(
                f"${n}::{'TEXT' if isinstance(c.type, JSON) else c.type.compile(dialect)}[]"
                for n, c in enumerate(cols, 1)
            )
            select = ", ".join(
                f"{name}::JSON" if isinstance(c.type, JSON) else name
                for name, c in zip(columns, cols, strict=True)
            )
            self._pg_sql = (
                f"{head} SELECT {select} FROM unnest({arrays}) AS u({', '.join(columns)}){tail}"
            )
        else:
            width = len(columns)
            self._chunk = _SQLITE_MAX_VARIABLES // width
            self._head, self._tail = head, tail
            self._values = lru_cache(maxsize=64)(
                lambda n: ", ".join(["(" + ", ".join("?" * width) + ")"] * n)
            )

    def prepare(self, rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
        """Rows (tuples in column order, Python values) → driver values, column by column.

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

    def run(self, conn: Connection, columns: list[list[Any]]) -> list[Row[Any]]:
        """Insert prepared columns; the RETURNING rows, if any."""
        if not columns or not columns[0]:
            return []
        if self.postgresql:
            result = conn.exec_driver_sql(self._pg_sql, tuple(columns))
            return list(result) if self.returning else []
        rows = list(zip(*columns, strict=True))
        out: list[Row[Any]] = []
        for start in range(0, len(rows), self._chunk):
            chunk = rows[start : start + self._chunk]
            flat = tuple(value for row in chunk for value in row)
            sql = f"{self._head} VALUES {self._values(len(chunk))}{self._tail}"
            result = conn.exec_driver_sql(sql, flat)
            if self.returning:
                out.extend(result)
        return out

    def execute(self, conn: Connection, rows: Sequence[Sequence[Any]]) -> list[Row[Any]]:
        return self.run(conn, self.prepare(rows)) if rows else []
