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

import msgspec
from sqlalchemy import JSON, Table
from sqlalchemy.engine import Connection, Dialect, Row

# bound parameters per SQLite statement (the compile-time default since 3.32, 999 before)
_SQLITE_MAX_VARIABLES = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999


def _json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode()


class BulkInsert:
    def __init__(
        self,
        table: Table,
        columns: Sequence[str],
        dialect: Dialect,
        *,
        on_conflict: Sequence[str] = (),
        returning: Sequence[str] = (),
        fixed: dict[str, str] | None = None,
    ) -> None:
        """``fixed``: PostgreSQL only, columns given by one SQL expression (a literal, a scalar
        parameter) for every row instead of an array: fewer values to encode and send."""
        self.postgresql = dialect.name == "postgresql"
        self.returning = bool(returning)
        cols = [table.c[name] for name in columns]
        # JSON with msgspec, several times faster than the dialect's json.dumps: what bulk
        # inserts write there is ours (an event's transport details), plain JSON types only
        self.processors: list[Callable[[Any], Any] | None] = [
            _json_text if isinstance(col.type, JSON) else col.type._cached_bind_processor(dialect)
            for col in cols
        ]
        tail = ""
        if on_conflict:
            tail += f" ON CONFLICT ({', '.join(on_conflict)}) DO NOTHING"
        if returning:
            tail += f" RETURNING {', '.join(returning)}"
        self.tail = tail
        fixed = fixed or {}
        self.head = f"INSERT INTO {table.name} ({', '.join([*columns, *fixed])})"
        if self.postgresql:
            # JSON travels as text (its bind processor serializes) and is cast back per row
            self._names = list(columns)
            self._array_types = [
                f"{'TEXT' if isinstance(c.type, JSON) else c.type.compile(dialect)}[]" for c in cols
            ]
            self._exprs = [
                f"u.{name}::JSON" if isinstance(c.type, JSON) else f"u.{name}"
                for name, c in zip(columns, cols, strict=True)
            ] + list(fixed.values())
            self._pg_sql = f"{self.head} {self.pg_select(1)}{tail}"
        else:
            width = len(columns)
            self._chunk = _SQLITE_MAX_VARIABLES // width
            self._values = lru_cache(maxsize=64)(
                lambda n: ", ".join(["(" + ", ".join("?" * width) + ")"] * n)
            )

    def pg_select(
        self, first: int, *, owner: Sequence[tuple[str, str]] = (), only: str = ""
    ) -> str:
        """``SELECT … FROM unnest($first, …)``: rows from one array per column, in the order given.

        With ``owner`` (parent column, array type), this is a child table whose first column is
        its parent's id: the first arrays hold each row's parent key, joined to an ``ev`` CTE
        (the parent rows just written, with those columns and the boolean column ``only``, if
        given, that says which of them take children) for the id.
        """
        keys = [f"owner_{name}" for name, _ in owner]
        skip = 1 if owner else 0
        names = [*keys, *self._names[skip:]]
        types = [f"{t}[]" for _, t in owner] + self._array_types[skip:]
        arrays = ", ".join(f"${n}::{t}" for n, t in enumerate(types, first))
        source = f"unnest({arrays}) WITH ORDINALITY AS u({', '.join(names)}, ord)"
        exprs = ", ".join(self._exprs[skip:])
        if not owner:
            return f"SELECT {exprs} FROM {source} ORDER BY u.ord"
        on = [f"ev.{name} = u.owner_{name}" for name, _ in owner] + ([f"ev.{only}"] if only else [])
        return f"SELECT ev.id, {exprs} FROM {source} JOIN ev ON {' AND '.join(on)} ORDER BY u.ord"

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
            sql = f"{self.head} VALUES {self._values(len(chunk))}{self.tail}"
            result = conn.exec_driver_sql(sql, flat)
            if self.returning:
                out.extend(result)
        return out

    def execute(self, conn: Connection, rows: Sequence[Sequence[Any]]) -> list[Row[Any]]:
        return self.run(conn, self.prepare(rows)) if rows else []
