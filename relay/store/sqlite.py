"""The SQLite backend: one writer thread, ingest batches on the event loop, plain-driver SQL.

SQLite takes one writer at a time anyway; doing each write transaction on one thread with the
plain driver costs a single hop from the event loop per batch instead of one per statement, and
never makes two writers wait on the file lock. The statements are relay/store/sql/*.sqlite.sql.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from operator import itemgetter
from typing import Any, ClassVar, TypeVar

from sqlalchemy import Table
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.dml import Insert

from relay.store.backend import IngestShape
from relay.store.bind import Binder
from relay.store.db import create_inline_engine, create_sync_engine, sqlite_sync
from relay.store.named_sql import queries
from relay.store.queue import Claim, Outcome, QueueSession, aware, next_state, pauses
from relay.store.rows import (
    DELIVERY_COLUMNS,
    EVENT_COLUMNS,
    Incoming,
    Key,
    RowRefused,
    delivery_rows,
    event_row,
)
from relay.store.tables import deliveries, event_numbers, events, utcnow

__all__ = ["CHECKPOINT_EVERY", "SqliteBackend", "sqlite_time"]

T = TypeVar("T")
log = logging.getLogger("relay.store")
CHECKPOINT_EVERY = 50  # inline commits between two WAL checkpoints (~25 pages each at 32 events)
# bound parameters per SQLite statement (the compile-time default since 3.32, 999 before)
_MAX_VARIABLES = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999

_QUEUE = queries("queue.sqlite")
CLAIM_EXPIRED = _QUEUE["claim_expired"]
CLAIM_DUE = _QUEUE["claim_due"]
SUPERSEDE = _QUEUE["supersede"]
EVENT_BODIES = _QUEUE["event_bodies"]
FINISH = _QUEUE["finish"]
ATTEMPT = _QUEUE["attempt"]
PAUSE = _QUEUE["pause"]
_INGEST = queries("ingest.sqlite")
KNOWN_EVENTS = _INGEST["known_events"]


def sqlite_time(value: datetime | None) -> str | None:
    """The text ``UTCDateTime`` stores on SQLite (naive UTC, always with microseconds), so raw
    writes compare and read back exactly like SQLAlchemy's."""
    if value is None:
        return None
    if value.tzinfo is not UTC:
        value = aware(value).astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(" ", "microseconds")


def _marks(n: int) -> str:
    return ", ".join("?" * n)


class _ManyRows:
    """A named multi-row INSERT (``VALUES {rows}``), in as few statements as the bound-parameter
    limit allows; the statement text for each row count is built once."""

    def __init__(self, sql: str, binder: Binder, *, returning: bool = False) -> None:
        self.binder = binder
        self.returning = returning
        width = len(binder.columns)
        self._chunk = _MAX_VARIABLES // width
        group = f"({_marks(width)})"
        self._sql = lru_cache(maxsize=64)(lambda n: sql.replace("{rows}", ", ".join([group] * n)))

    def run(self, conn: Connection, columns: list[list[Any]]) -> list[Row[Any]]:
        """Insert prepared columns; the RETURNING rows, if any."""
        if not columns or not columns[0]:
            return []
        rows = list(zip(*columns, strict=True))
        out: list[Row[Any]] = []
        for start in range(0, len(rows), self._chunk):
            chunk = rows[start : start + self._chunk]
            flat = tuple(value for row in chunk for value in row)
            result = conn.exec_driver_sql(self._sql(len(chunk)), flat)
            if self.returning:
                out.extend(result)
        return out


def _owned(columns: list[list[Any]], owners: list[Key], ids: dict[Key, int]) -> list[list[Any]]:
    """Prepared child rows (first column: the event id) of the events just inserted."""
    if not columns:
        return columns
    if all(owner in ids for owner in owners):
        return [[ids[owner] for owner in owners], *columns[1:]]
    keep = [n for n, owner in enumerate(owners) if owner in ids]
    return [[ids[owners[n]] for n in keep], *([col[n] for n in keep] for col in columns[1:])]


class SqliteBackend:
    dialect: ClassVar[str] = "sqlite"
    # one writer, and its batches run on the event loop: one at a time, as large as what has
    # arrived
    ingest: ClassVar[IngestShape] = IngestShape(concurrency=1, max_batch=500)
    # one process: its buckets stay in memory (relay.connector.Limiters), never in the database

    @staticmethod
    def insert(table: Table) -> Insert:
        return sqlite.insert(table)

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        dialect = engine.dialect
        self._events = _ManyRows(
            _INGEST["insert_events"],
            Binder(events, [*EVENT_COLUMNS, "received_at"], dialect),
            returning=True,
        )
        self._deliveries = _ManyRows(
            _INGEST["insert_deliveries"], Binder(deliveries, DELIVERY_COLUMNS, dialect)
        )
        self._numbers = _ManyRows(
            _INGEST["insert_numbers"], Binder(event_numbers, ["event_id", "number"], dialect)
        )
        synchronous = sqlite_sync(engine)  # the writes keep what the engine was made to keep
        self._sync_engine: Engine = create_sync_engine(engine.url, synchronous=synchronous)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="relay-sqlite-writer")
        self._inline_engine: Engine = create_inline_engine(engine.url, synchronous=synchronous)
        self._inline_commits = 0
        self._thread_writes = 0  # queued or running on the writer thread
        self._checkpointing = False

    # -- transactions -------------------------------------------------------------------------

    async def write(self, work: Callable[[Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        self._thread_writes += 1
        try:
            return await loop.run_in_executor(self._writer, self._write_sync, work)
        finally:
            self._thread_writes -= 1

    def _write_sync(self, work: Callable[[Connection], T]) -> T:
        with self._sync_engine.begin() as conn:
            return work(conn)

    async def write_soon(self, work: Callable[[Connection], T]) -> T:
        """``write`` for the ingest hot path: right here on the event loop when the write lock
        is free, which ``write`` takes again if it is not.

        A writer thread shares the GIL with the loop: while the loop parses requests, each of the
        dozen GIL hand-offs in a transaction waits its turn, so a commit takes several times
        its own work. On the loop, a batch's SQL (no sync to disk, see relay.store.db) simply
        runs (bench/README.md has the figures). WAL checkpoints go to the writer thread.

        While the writer thread has work (the dispatcher's claims and outcomes), the batch joins
        its queue instead: two writers in one process would meet on the file lock, and SQLite's
        busy wait sleeps in steps of milliseconds. Nothing reaches that queue while the loop is
        busy here, so a transaction started on the loop never makes the thread wait.
        """
        if self._thread_writes:
            return await self.write(work)
        try:
            with self._inline_engine.begin() as conn:
                result = work(conn)
        except OperationalError as exc:
            if getattr(exc.orig, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY:
                raise
            return await self.write(work)  # another connection holds the lock: wait there
        self._inline_commits += 1
        if self._inline_commits >= CHECKPOINT_EVERY and not self._checkpointing:
            self._inline_commits = 0
            self._checkpointing = True
            asyncio.get_running_loop().run_in_executor(self._writer, self._checkpoint)
        return result

    def _checkpoint(self) -> None:
        """Copy committed WAL pages into the database file without blocking any writer."""
        try:
            with self._sync_engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        except Exception as exc:  # the next one will try again
            log.warning("WAL checkpoint failed: %s", exc)
        finally:
            self._checkpointing = False

    async def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._sync_engine.dispose()
        self._inline_engine.dispose()

    # -- ingest -------------------------------------------------------------------------------

    async def record_events(
        self, items: Sequence[Incoming], now: datetime
    ) -> tuple[dict[Key, int], dict[Key, int]]:
        """Distinct events in one transaction; the ids of those inserted, and of all of them.

        Every row is built before the transaction: only the SQL runs inside it.
        """
        event_columns = self._events.binder.prepare([(*event_row(item), now) for item in items])
        # deliveries and phone numbers of every item; the event id is filled in once known,
        # and a duplicate's rows are dropped
        owners: list[Key] = []
        child_rows: list[tuple[Any, ...]] = []
        number_owners: list[Key] = []
        number_rows: list[tuple[Any, ...]] = []
        for item in items:
            rows = delivery_rows(0, item.event, item.connectors, now)
            child_rows += rows
            owners += [item.key] * len(rows)
            number_rows += [(0, number) for number in item.numbers]
            number_owners += [item.key] * len(item.numbers)
        delivery_columns = self._deliveries.binder.prepare(child_rows) if child_rows else []
        number_columns = self._numbers.binder.prepare(number_rows) if number_rows else []

        def write(conn: Connection) -> tuple[dict[Key, int], dict[Key, int]]:
            new = {(r[1], r[2]): int(r[0]) for r in self._events.run(conn, event_columns)}
            known = dict(new)
            if len(new) < len(items):
                iids, shas = zip(*(item.key for item in items if item.key not in new), strict=True)
                distinct = tuple(set(iids))
                sql = KNOWN_EVENTS.replace("{iids}", _marks(len(distinct)))
                sql = sql.replace("{shas}", _marks(len(shas)))
                found = conn.exec_driver_sql(sql, (*distinct, *shas))
                known |= {(r[1], r[2]): int(r[0]) for r in found}
            self._deliveries.run(conn, _owned(delivery_columns, owners, new))
            self._numbers.run(conn, _owned(number_columns, number_owners, new))
            return new, known

        try:
            return await self.write_soon(write)
        except (IntegrityError, DataError) as exc:  # a constraint, a value SQLite refuses
            raise RowRefused.of(exc) from exc

    async def add_deliveries(self, rows: Sequence[tuple[Any, ...]]) -> None:
        if not rows:
            return
        columns = self._deliveries.binder.prepare(rows)
        await self.write(lambda conn: self._deliveries.run(conn, columns))

    # -- the delivery queue -------------------------------------------------------------------

    async def claim(
        self, connector: str, limit: int, *, worker: str, lease: float, coalesce: bool = False
    ) -> list[Claim]:
        if limit <= 0:
            return []
        now = utcnow()
        at, lease_to = sqlite_time(now), sqlite_time(now + timedelta(seconds=lease))

        def write(conn: Connection) -> list[Claim]:
            cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            if coalesce:
                cur.execute(SUPERSEDE, (connector, at, limit))
            rows = cur.execute(
                CLAIM_EXPIRED, (lease_to, worker, at, connector, at, limit)
            ).fetchall()
            if len(rows) < limit:
                rows += cur.execute(
                    CLAIM_DUE, (lease_to, worker, at, connector, at, limit - len(rows))
                ).fetchall()
            if not rows:
                return []
            ids = list({r[1] for r in rows})
            bodies = dict(cur.execute(EVENT_BODIES.replace("{ids}", _marks(len(ids))), ids))
            rows.sort(key=itemgetter(0))
            return [Claim(r[0], r[1], connector, r[2], r[3], bytes(bodies[r[1]])) for r in rows]

        return await self.write(write)

    async def finish_batch(self, done: Sequence[tuple[Claim, Outcome]], *, worker: str) -> int:
        if not done:
            return 0
        now = utcnow()
        paused = pauses(done)
        at = sqlite_time(now)
        moves, history = [], []
        for claim, outcome in done:
            refund, next_at, done_at = next_state(outcome, now)
            moves.append(
                (
                    outcome.state,
                    outcome.error,
                    refund,
                    sqlite_time(next_at),
                    sqlite_time(done_at),
                    at,
                    claim.delivery_id,
                    worker,
                )
            )
            history.append(
                (
                    claim.delivery_id,
                    claim.attempt,
                    sqlite_time(outcome.started_at),
                    outcome.duration_ms,
                    outcome.kind,
                    outcome.status_code,
                    outcome.error,
                    worker,
                )
            )

        def write(conn: Connection) -> int:
            cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            moved = cur.executemany(FINISH, moves).rowcount
            cur.executemany(ATTEMPT, history)
            for connector, until, reason in paused:
                cur.execute(PAUSE, (connector, sqlite_time(until), reason, at))
            return int(moved)

        return await self.write(write)

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[QueueSession]:
        """The single writer thread needs no held connection: the backend itself."""
        yield self
