"""The delivery queue: claim due deliveries under a lease, record what each attempt came to.

Retry state lives on the delivery row (the procrastinate way): state, attempts, next attempt,
lease. A claim is a lease, so a crashed worker's claims return when it runs out; on PostgreSQL,
concurrent workers skip each other's rows (``FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import TYPE_CHECKING, Protocol, TypeVar

from sqlalchemy import select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from relay.store.queue_sql import (
    PG_CLAIM,
    PG_FINISH,
    PG_PAUSE,
    SQLITE_ATTEMPT,
    SQLITE_CLAIM_DUE,
    SQLITE_CLAIM_EXPIRED,
    SQLITE_FINISH,
    SQLITE_PAUSE,
)
from relay.store.tables import connector_state, deliveries, utcnow

if TYPE_CHECKING:
    import asyncpg

T = TypeVar("T")

# Delivery states: pending, running (leased), succeeded, dead, cancelled (by an admin).
# Only ACTIVE ones hold back later deliveries with the same ordering key.
ACTIVE = ("pending", "running")


@dataclass(frozen=True, slots=True)
class Claim:
    delivery_id: int
    event_id: int
    connector: str
    integration_id: str
    attempt: int
    raw: bytes


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to; ``state`` is the delivery's next state."""

    state: str  # succeeded | pending | dead
    kind: str  # succeeded | retry | dead | paused
    started_at: datetime
    duration_ms: int
    next_attempt_at: datetime | None = None
    status_code: int | None = None
    error: str | None = None
    pause_until: datetime | None = None


def aware(value: datetime) -> datetime:
    """UTC-aware, as ``UTCDateTime`` stores it: a naive datetime is taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def sqlite_time(value: datetime | None) -> str | None:
    """The text ``UTCDateTime`` stores on SQLite (naive UTC, always with microseconds), so raw
    writes compare and read back exactly like SQLAlchemy's."""
    if value is None:
        return None
    if value.tzinfo is not UTC:
        value = aware(value).astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(" ", "microseconds")


def _next_state(outcome: Outcome, now: datetime) -> tuple[int, datetime | None, datetime | None]:
    """(attempts refund, next attempt, completed at) for a delivery's row."""
    refund = 1 if outcome.kind == "paused" else 0  # waiting out a quota is not a failed attempt
    if outcome.state == "pending":
        return refund, outcome.next_attempt_at or now, None
    return refund, None, now


def _pauses(done: Sequence[tuple[Claim, Outcome]]) -> list[tuple[str, datetime, str | None]]:
    return [
        (claim.connector, outcome.pause_until, outcome.error)
        for claim, outcome in done
        if outcome.pause_until is not None
    ]


class DeliveryQueue:
    """The dispatch side of the store; ``Store`` provides ``write``, ``dialect`` and ``engine``."""

    dialect: str
    engine: AsyncEngine

    if TYPE_CHECKING:

        async def write(self, work: Callable[[Connection], T]) -> T: ...

    async def _pg(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``work`` on a pooled connection's asyncpg driver (autocommit unless it opens a
        transaction); a connection that fails mid-way is discarded, not returned to the pool."""
        async with self.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            try:
                return await work(raw.driver_connection)  # type: ignore[arg-type]
            except BaseException:
                await conn.invalidate()
                raise

    async def claim(self, connector: str, limit: int, *, worker: str, lease: float) -> list[Claim]:
        """Lease up to ``limit`` due deliveries whose earlier siblings (same key) are done.

        Claims whose lease ran out (a crashed worker's) come first. Each pick walks the
        (state, connector, next_attempt_at, id) index in due order and stops at its limit, so
        a long backlog costs nothing per claim.
        """
        if limit <= 0:
            return []
        if self.dialect == "postgresql":
            return await self._pg(lambda conn: _pg_claim(conn, connector, limit, worker, lease))
        now = utcnow()
        at, lease_to = sqlite_time(now), sqlite_time(now + timedelta(seconds=lease))

        def write(conn: Connection) -> list[Claim]:
            cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            rows = cur.execute(
                SQLITE_CLAIM_EXPIRED, (lease_to, worker, at, connector, at, limit)
            ).fetchall()
            if len(rows) < limit:
                rows += cur.execute(
                    SQLITE_CLAIM_DUE, (lease_to, worker, at, connector, at, limit - len(rows))
                ).fetchall()
            if not rows:
                return []
            ids = list({r[1] for r in rows})
            marks = ",".join("?" * len(ids))
            bodies = dict(cur.execute(f"SELECT id, raw FROM events WHERE id IN ({marks})", ids))
            rows.sort(key=itemgetter(0))
            return [Claim(r[0], r[1], connector, r[2], r[3], bytes(bodies[r[1]])) for r in rows]

        return await self.write(write)

    async def finish(self, claim: Claim, outcome: Outcome, *, worker: str) -> bool:
        """Record one attempt; see ``finish_batch``."""
        return await self.finish_batch([(claim, outcome)], worker=worker) == 1

    async def finish_batch(self, done: Sequence[tuple[Claim, Outcome]], *, worker: str) -> int:
        """Record attempts and move their deliveries on, in one transaction.

        A row whose lease another worker has taken over is left alone (its attempt is still
        recorded as history); returns how many deliveries this worker actually moved on.
        """
        if not done:
            return 0
        if self.dialect == "postgresql":
            return await self._pg(lambda conn: _pg_finish(conn, done, worker))
        now = utcnow()
        pauses = _pauses(done)
        at = sqlite_time(now)
        moves, history = [], []
        for claim, outcome in done:
            refund, next_at, done_at = _next_state(outcome, now)
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
            moved = cur.executemany(SQLITE_FINISH, moves).rowcount
            cur.executemany(SQLITE_ATTEMPT, history)
            for connector, until, reason in pauses:
                cur.execute(SQLITE_PAUSE, (connector, sqlite_time(until), reason, at))
            return int(moved)

        return await self.write(write)

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[QueueSession]:
        """``claim`` and ``finish_batch`` for a run of calls on one connection.

        On PostgreSQL every pool checkout pings the server first (three round trips, more than
        the claim or finish statement itself, and each waits its turn in a busy event loop), so
        a busy dispatcher keeps one connection for as long as it has work. A failure discards
        the connection. SQLite's single writer thread needs no such thing.
        """
        if self.dialect != "postgresql":
            yield self
            return
        async with self.engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            try:
                yield PgSession(raw)  # type: ignore[arg-type]
            except BaseException:
                await conn.invalidate()
                raise

    async def release(self, delivery_ids: Sequence[int], *, worker: str) -> int:
        """Hand unfinished claims back (graceful shutdown) without counting an attempt."""
        if not delivery_ids:
            return 0
        stmt = (
            update(deliveries)
            .where(
                deliveries.c.id.in_(delivery_ids),
                deliveries.c.state == "running",
                deliveries.c.leased_by == worker,
            )
            .values(
                state="pending",
                attempts=deliveries.c.attempts - 1,
                lease_until=None,
                leased_by=None,
                next_attempt_at=utcnow(),
                updated_at=utcnow(),
            )
        )
        return await self.write(lambda conn: conn.execute(stmt).rowcount)

    async def paused_connectors(self) -> dict[str, datetime]:
        now = utcnow()
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(connector_state.c.connector, connector_state.c.paused_until).where(
                    connector_state.c.paused_until > now
                )
            )
            return {r.connector: r.paused_until for r in rows}


class QueueSession(Protocol):
    async def claim(
        self, connector: str, limit: int, *, worker: str, lease: float
    ) -> list[Claim]: ...

    async def finish_batch(self, done: Sequence[tuple[Claim, Outcome]], *, worker: str) -> int: ...


class PgSession:
    """The queue's hot statements on one held asyncpg connection (see ``DeliveryQueue.session``)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def claim(self, connector: str, limit: int, *, worker: str, lease: float) -> list[Claim]:
        if limit <= 0:
            return []
        return await _pg_claim(self.conn, connector, limit, worker, lease)

    async def finish_batch(self, done: Sequence[tuple[Claim, Outcome]], *, worker: str) -> int:
        return await _pg_finish(self.conn, done, worker)


async def _pg_claim(
    conn: asyncpg.Connection, connector: str, limit: int, worker: str, lease: float
) -> list[Claim]:
    now = utcnow()
    rows = await conn.fetch(PG_CLAIM, connector, now, limit, now + timedelta(seconds=lease), worker)
    rows.sort(key=itemgetter(0))
    # (id, event_id, integration_id, attempts, raw)
    return [Claim(r[0], r[1], connector, r[2], r[3], r[4]) for r in rows]


async def _pg_finish(
    conn: asyncpg.Connection, done: Sequence[tuple[Claim, Outcome]], worker: str
) -> int:
    if not done:
        return 0
    now = utcnow()
    pauses = _pauses(done)
    ids, states, errors, refunds, nexts, dones = [], [], [], [], [], []
    numbers, started, durations, kinds, codes = [], [], [], [], []
    for claim, outcome in done:
        refund, next_at, done_at = _next_state(outcome, now)
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
    if not pauses:  # one statement: atomic without a transaction round trip
        return int(await conn.fetchval(PG_FINISH, *args))
    async with conn.transaction():
        moved = int(await conn.fetchval(PG_FINISH, *args))
        for connector, until, reason in pauses:
            await conn.execute(PG_PAUSE, connector, aware(until), reason, now)
        return moved
