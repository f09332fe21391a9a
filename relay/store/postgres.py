"""The PostgreSQL backend: asyncpg statements on held connections, one round trip per batch.

Ingest writes a whole batch of events as one statement (one transaction in autocommit): the
events, and the deliveries and phone numbers of those that are new. The queue's claim and
finish are one statement each too; concurrent workers skip each other's rows (``FOR UPDATE SKIP
LOCKED``). The statements are relay/store/sql/*.postgresql.sql.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any, ClassVar, TypeVar

import asyncpg
from sqlalchemy import Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.dml import Insert

from relay.store.backend import IngestShape
from relay.store.bind import Binder
from relay.store.held_connections import HeldConnections
from relay.store.named_sql import queries
from relay.store.queue import Claim, Outcome, QueueSession, aware, next_state, pauses
from relay.store.rows import (
    DELIVERY_COLUMNS,
    EVENT_COLUMNS,
    Incoming,
    Key,
    RowRefused,
    event_row,
    ordering_key,
)
from relay.store.tables import deliveries, events, utcnow

__all__ = ["PgBackend", "PgSession"]

T = TypeVar("T")

_QUEUE = queries("queue.postgresql")
CLAIM = _QUEUE["claim"]
SUPERSEDE = _QUEUE["supersede"]
FINISH = _QUEUE["finish"]
PAUSE = _QUEUE["pause"]
_INGEST = queries("ingest.postgresql")
RECORD_EVENTS = _INGEST["record_events"]
ADD_DELIVERIES = _INGEST["add_deliveries"]
TAKE = queries("rate.postgresql")["take"]

# what a connection that died while held raises on its next use
# (InternalClientError: the server's goodbye arrived while the connection sat idle)
_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
)
# what a value the server (a data exception, SQLSTATE class 22; a constraint, class 23) or the
# driver (an argument it cannot encode) refuses raises: the rows' fault, not the connection's
_REFUSED = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.exceptions._base.DataError,
)


def _arrays(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows → one list per column (asyncpg sends each as an array)."""
    return [list(column) for column in zip(*rows, strict=True)] or [[] for _ in range(width)]


class PgBackend:
    dialect: ClassVar[str] = "postgresql"
    # two batches in flight, on two connections, and a batch closes at 16 events: a burst is
    # then committed in parts, each while the event loop reads the next instead of after it
    # has read them all (bench/README.md has the measured gain)
    ingest: ClassVar[IngestShape] = IngestShape(concurrency=2, max_batch=16)
    # every `relay serve`/`relay worker` of a cluster takes from the same buckets (rate_buckets)

    @staticmethod
    def insert(table: Table) -> Insert:
        return postgresql.insert(table)

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.held = HeldConnections(engine)
        self._events = Binder(events, EVENT_COLUMNS, engine.dialect)
        self._deliveries = Binder(deliveries, DELIVERY_COLUMNS, engine.dialect)

    async def write(self, work: Callable[[Connection], T]) -> T:
        async with self.engine.begin() as conn:
            return await conn.run_sync(work)

    async def close(self) -> None:
        await self.held.close()

    # -- ingest -------------------------------------------------------------------------------

    async def record_events(
        self, items: Sequence[Incoming], now: datetime
    ) -> tuple[dict[Key, int], dict[Key, int]]:
        args = [
            *self._events.prepare([event_row(item) for item in items]),
            *_arrays(
                [
                    (*item.key, name, ordering_key(name, item.event))
                    for item in items
                    for name in item.connectors
                ],
                4,
            ),
            *_arrays([(*item.key, number) for item in items for number in item.numbers], 3),
            now,
        ]
        try:
            rows = await self._record_events(args)
        except _LOST:
            # A held connection the server dropped (a restart, a failover): once more on a new
            # one. Safe even if the first one committed: stored bodies come back as such.
            rows = await self._record_events(args)
        return {(r[1], r[2]): r[0] for r in rows if r[3]}, {(r[1], r[2]): r[0] for r in rows}

    async def _record_events(self, args: list[Any]) -> list[asyncpg.Record]:
        try:
            async with self.held.connection() as raw:
                return await raw.fetch(RECORD_EVENTS, *args)
        except _REFUSED as exc:  # RowRefused is not _LOST: what the rows hold is not retried
            raise RowRefused.of(exc) from exc

    async def add_deliveries(self, rows: Sequence[tuple[Any, ...]]) -> None:
        if not rows:
            return
        columns = tuple(self._deliveries.prepare(rows))
        await self.write(lambda conn: conn.exec_driver_sql(ADD_DELIVERIES, columns))

    # -- rate limits shared by the cluster ---------------------------------------------------

    async def take_token(self, connector: str, bucket: str, interval: float, burst: int) -> float:
        """One token of a cluster-wide bucket: the seconds to wait before using it (one
        statement on a held connection; relay/store/sql/rate.postgresql.sql)."""
        try:
            return await self._take_token(connector, bucket, interval, burst)
        except _LOST:  # a held connection the server dropped: once more, on a new one
            return await self._take_token(connector, bucket, interval, burst)

    async def _take_token(self, connector: str, bucket: str, interval: float, burst: int) -> float:
        async with self.held.connection() as raw:
            return float(await raw.fetchval(TAKE, connector, bucket, interval, burst))

    # -- the delivery queue -------------------------------------------------------------------

    async def _raw(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``work`` on a pooled connection's asyncpg driver (autocommit unless it opens a
        transaction); a connection that fails mid-way is discarded, not returned to the pool."""
        async with self.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            try:
                return await work(raw.driver_connection)  # type: ignore[arg-type]
            except BaseException:
                await conn.invalidate()
                raise

    async def claim(
        self, connector: str, limit: int, *, worker: str, lease: float, coalesce: bool = False
    ) -> list[Claim]:
        if limit <= 0:
            return []
        return await self._raw(lambda conn: _claim(conn, connector, limit, worker, lease, coalesce))

    async def finish_batch(self, done: Sequence[tuple[Claim, Outcome]], *, worker: str) -> int:
        if not done:
            return 0
        return await self._raw(lambda conn: _finish(conn, done, worker))

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[QueueSession]:
        """Every pool checkout pings the server first (three round trips, more than the claim or
        finish statement itself, and each waits its turn in a busy event loop), so a busy
        dispatcher keeps one connection for as long as it has work. A failure discards it."""
        async with self.engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            try:
                yield PgSession(raw)  # type: ignore[arg-type]
            except BaseException:
                await conn.invalidate()
                raise


class PgSession:
    """The queue's hot statements on one held asyncpg connection (see ``PgBackend.session``)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def claim(
        self, connector: str, limit: int, *, worker: str, lease: float, coalesce: bool = False
    ) -> list[Claim]:
        if limit <= 0:
            return []
        return await _claim(self.conn, connector, limit, worker, lease, coalesce)

    async def finish_batch(self, done: Sequence[tuple[Claim, Outcome]], *, worker: str) -> int:
        return await _finish(self.conn, done, worker)


async def _claim(
    conn: asyncpg.Connection,
    connector: str,
    limit: int,
    worker: str,
    lease: float,
    coalesce: bool = False,
) -> list[Claim]:
    now = utcnow()
    args = (CLAIM, connector, now, limit, now + timedelta(seconds=lease), worker)
    if coalesce:  # one transaction: the claim picks the newest state the supersede step left
        async with conn.transaction():
            await conn.execute(SUPERSEDE, connector, now, limit)
            rows = await conn.fetch(*args)
    else:
        rows = await conn.fetch(*args)
    rows.sort(key=itemgetter(0))
    # (id, event_id, integration_id, attempts, raw)
    return [Claim(r[0], r[1], connector, r[2], r[3], r[4]) for r in rows]


async def _finish(
    conn: asyncpg.Connection, done: Sequence[tuple[Claim, Outcome]], worker: str
) -> int:
    if not done:
        return 0
    now = utcnow()
    paused = pauses(done)
    ids, states, errors, refunds, nexts, dones = [], [], [], [], [], []
    numbers, started, durations, kinds, codes = [], [], [], [], []
    for claim, outcome in done:
        refund, next_at, done_at = next_state(outcome, now)
        ids.append(claim.delivery_id)
        states.append(outcome.state)
        errors.append(outcome.error)
        refunds.append(refund)
        nexts.append(aware(next_at) if next_at is not None else None)
        dones.append(done_at)
        numbers.append(claim.attempt)
        started.append(aware(outcome.started_at))
        durations.append(outcome.duration_ms)
        kinds.append(outcome.kind)
        codes.append(outcome.status_code)
    args = (ids, states, errors, refunds, nexts, dones, now, worker)
    args += (numbers, started, durations, kinds, codes)
    if not paused:  # one statement: atomic without a transaction round trip
        return int(await conn.fetchval(FINISH, *args))
    async with conn.transaction():
        moved = int(await conn.fetchval(FINISH, *args))
        for connector, until, reason in paused:
            await conn.execute(PAUSE, connector, aware(until), reason, now)
        return moved
