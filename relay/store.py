"""The durable store: record events with their deliveries, claim due work, record outcomes.

Every write that acknowledges something to the outside world (an HTTP 200, an SQS delete, a
connector's success) is one transaction. Claims are leases, so a crashed worker's work returns.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import and_, bindparam, delete, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import aliased

from relay import numbers
from relay.db import create_sync_engine
from relay.models import (
    AttemptRow,
    ConnectorStateRow,
    DeliveryRow,
    EventNumberRow,
    EventRow,
    LinkRow,
    RejectionRow,
    UTCDateTime,
)
from relay.wildix import Event

events = EventRow.__table__
deliveries = DeliveryRow.__table__
attempts = AttemptRow.__table__
links = LinkRow.__table__
connector_state = ConnectorStateRow.__table__
rejections = RejectionRow.__table__
event_numbers = EventNumberRow.__table__

# Delivery states: pending, running (leased), succeeded, dead, cancelled (by an admin).
# Only ACTIVE ones hold back later deliveries with the same ordering key.
ACTIVE = ("pending", "running")
T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


def ordering_key(connector: str, event: Event) -> str:
    """Deliveries of one subject (a call, a user's presence) to one connector run in order."""
    return f"{connector}|{event.integration_id}|{event.call_id or event.id}"


@dataclass(frozen=True, slots=True)
class Incoming:
    """A verified event on its way into the store, with the connectors it was routed to."""

    event: Event
    connectors: Sequence[str]
    transport: str
    meta: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Recorded:
    event_id: int
    duplicate: bool
    deliveries: int


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


class Store:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        self._writer: ThreadPoolExecutor | None = None
        self._sync_engine: Engine | None = None
        if self.dialect == "sqlite":
            # SQLite takes one writer at a time anyway; doing each write transaction on one
            # thread with the plain driver costs a single hop from the event loop per batch
            # instead of one per statement, and never makes two writers wait on the file lock.
            self._sync_engine = create_sync_engine(engine.url)
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="relay-sqlite-writer")

    async def write(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in one write transaction (committed when it returns)."""
        if self._writer is not None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._writer, self._write_sync, work)
        async with self.engine.begin() as conn:
            return await conn.run_sync(work)

    def _write_sync(self, work: Callable[[Connection], T]) -> T:
        assert self._sync_engine is not None
        with self._sync_engine.begin() as conn:
            return work(conn)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=True)
        if self._sync_engine is not None:
            self._sync_engine.dispose()
        await self.engine.dispose()

    # -- ingest -------------------------------------------------------------------------------

    async def record(
        self,
        event: Event,
        connectors: Sequence[str],
        *,
        transport: str,
        meta: dict[str, Any] | None = None,
    ) -> Recorded:
        """Store one event with its deliveries; see ``record_batch``."""
        [recorded] = await self.record_batch([Incoming(event, connectors, transport, meta)])
        return recorded

    async def record_batch(self, items: Sequence[Incoming]) -> list[Recorded]:
        """Store events and one delivery per matched connector in ONE transaction.

        Dedupe is on the body's SHA-256 per integration, exact inside the batch (the first copy
        is accepted, later ones are duplicates) and across batches (the unique constraint).
        """
        now = utcnow()
        keys = [(i.event.integration_id, hashlib.sha256(i.event.raw).hexdigest()) for i in items]
        first: dict[tuple[str, str], int] = {}
        for n, key in enumerate(keys):
            first.setdefault(key, n)
        rows = [
            {
                "integration_id": key[0],
                "type": items[n].event.type,
                "subject_id": items[n].event.id,
                "call_id": items[n].event.call_id,
                "body_sha256": key[1],
                "raw": items[n].event.raw,
                "occurred_at": items[n].event.time,
                "received_at": now,
                "transport": items[n].transport,
                "transport_meta": items[n].meta or {},
            }
            for key, n in first.items()
        ]
        insert_events = (
            self._insert(events)
            .on_conflict_do_nothing(index_elements=["integration_id", "body_sha256"])
            .returning(events.c.id, events.c.integration_id, events.c.body_sha256)
        )

        def write(conn: Connection) -> list[Recorded]:
            new = {
                (r.integration_id, r.body_sha256): int(r.id)
                for r in conn.execute(insert_events, rows)
            }
            known = dict(new)
            if len(new) < len(first):
                missing = {sha for key in first if key not in new for sha in key[1:]}
                found = conn.execute(
                    select(events.c.id, events.c.integration_id, events.c.body_sha256).where(
                        events.c.body_sha256.in_(missing)
                    )
                )
                known |= {(r.integration_id, r.body_sha256): int(r.id) for r in found}
            delivery_rows = [
                row
                for key, event_id in new.items()
                for row in self._delivery_rows(event_id, items[first[key]], now)
            ]
            if delivery_rows:
                conn.execute(insert(deliveries), delivery_rows)
            number_rows = [
                {"event_id": event_id, "number": number}
                for key, event_id in new.items()
                for number in numbers.in_data(items[first[key]].event.data)
            ]
            if number_rows:  # what the admin search by phone number looks up
                conn.execute(insert(event_numbers), number_rows)
            return [
                Recorded(known[key], False, len(items[n].connectors))
                if key in new and first[key] == n
                else Recorded(known[key], True, 0)
                for n, key in enumerate(keys)
            ]

        return await self.write(write)

    @staticmethod
    def _delivery_rows(event_id: int, item: Incoming, now: datetime) -> list[dict[str, Any]]:
        event = item.event
        return [
            {
                "event_id": event_id,
                "integration_id": event.integration_id,
                "connector": name,
                "ordering_key": ordering_key(name, event),
                "state": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
                "updated_at": now,
            }
            for name in item.connectors
        ]

    async def record_rejection(
        self,
        *,
        transport: str,
        reason: str,
        integration_id: str | None = None,
        status_code: int | None = None,
        remote: str | None = None,
        body: bytes | None = None,
        meta: dict[str, Any] | None = None,
        excerpt_limit: int = 16384,
    ) -> int:
        row = {
            "received_at": utcnow(),
            "transport": transport,
            "integration_id": integration_id,
            "reason": reason[:255],
            "status_code": status_code,
            "remote": remote,
            "body_sha256": hashlib.sha256(body).hexdigest() if body is not None else None,
            "body_excerpt": body[:excerpt_limit] if body is not None else None,
            "transport_meta": meta or {},
        }
        return await self.write(
            lambda conn: int(
                conn.execute(insert(rejections).returning(rejections.c.id), row).scalar_one()
            )
        )

    # -- dispatch -----------------------------------------------------------------------------

    async def claim(self, connector: str, limit: int, *, worker: str, lease: float) -> list[Claim]:
        """Lease up to ``limit`` due deliveries whose earlier siblings (same key) are done.

        Claims whose lease ran out (a crashed worker's) come first. Each pick walks the
        (state, connector, next_attempt_at, id) index in due order and stops at its limit, so
        a long backlog costs nothing per claim.
        """
        if limit <= 0:
            return []
        now = utcnow()
        d = deliveries.alias("d")
        e = aliased(DeliveryRow)
        earlier = (
            select(1)
            .where(e.ordering_key == d.c.ordering_key, e.id < d.c.id, e.state.in_(ACTIVE))
            .exists()
        )

        def take(due: Any, order: list[Any], n: int) -> Any:
            pick = select(d.c.id).where(d.c.connector == connector, due, ~earlier)
            pick = pick.order_by(*order).limit(n)
            if self.dialect == "postgresql":
                pick = pick.with_for_update(skip_locked=True)
            return (
                update(deliveries)
                .where(deliveries.c.id.in_(pick.scalar_subquery()))
                .values(
                    state="running",
                    attempts=deliveries.c.attempts + 1,
                    lease_until=now + timedelta(seconds=lease),
                    leased_by=worker,
                    updated_at=now,
                )
                .returning(
                    deliveries.c.id,
                    deliveries.c.event_id,
                    deliveries.c.integration_id,
                    deliveries.c.attempts,
                )
            )

        expired = and_(d.c.state == "running", d.c.lease_until < now)
        pending = and_(d.c.state == "pending", d.c.next_attempt_at <= now)

        def write(conn: Connection) -> tuple[list[Any], dict[int, bytes]]:
            rows = list(conn.execute(take(expired, [d.c.lease_until, d.c.id], limit)))
            if len(rows) < limit:
                order = [d.c.next_attempt_at, d.c.id]
                rows += conn.execute(take(pending, order, limit - len(rows))).all()
            if not rows:
                return [], {}
            wanted = events.c.id.in_({r.event_id for r in rows})
            return rows, dict(conn.execute(select(events.c.id, events.c.raw).where(wanted)).all())

        rows, bodies = await self.write(write)
        rows.sort(key=lambda r: r.id)
        return [
            Claim(
                r.id, r.event_id, connector, r.integration_id, r.attempts, bytes(bodies[r.event_id])
            )
            for r in rows
        ]

    async def finish(self, claim: Claim, outcome: Outcome, *, worker: str) -> bool:
        """Record one attempt; see ``finish_batch``."""
        return await self.finish_batch([(claim, outcome)], worker=worker) == 1

    async def finish_batch(self, done: Sequence[tuple[Claim, Outcome]], *, worker: str) -> int:
        """Record attempts and move their deliveries on, in one transaction.

        A row whose lease another worker has taken over is left alone (its attempt is still
        recorded as history); returns how many deliveries this worker actually moved on.
        """
        now = utcnow()
        moves = [
            {
                "b_id": claim.delivery_id,
                "b_worker": worker,
                "b_state": outcome.state,
                "b_error": outcome.error,
                # waiting out a quota is not a failed attempt
                "b_refund": 1 if outcome.kind == "paused" else 0,
                "b_next": (outcome.next_attempt_at or now) if outcome.state == "pending" else None,
                "b_completed": None if outcome.state == "pending" else now,
                "b_now": now,
            }
            for claim, outcome in done
        ]
        history = [
            {
                "delivery_id": claim.delivery_id,
                "number": claim.attempt,
                "started_at": outcome.started_at,
                "duration_ms": outcome.duration_ms,
                "outcome": outcome.kind,
                "status_code": outcome.status_code,
                "error": outcome.error,
                "worker": worker,
            }
            for claim, outcome in done
        ]
        move = (
            update(deliveries)
            .where(
                deliveries.c.id == bindparam("b_id"),
                deliveries.c.state == "running",
                deliveries.c.leased_by == bindparam("b_worker"),
            )
            .values(
                state=bindparam("b_state"),
                last_error=bindparam("b_error"),
                attempts=deliveries.c.attempts - bindparam("b_refund"),
                next_attempt_at=func.coalesce(
                    bindparam("b_next", type_=UTCDateTime()), deliveries.c.next_attempt_at
                ),
                completed_at=bindparam("b_completed", type_=UTCDateTime()),
                lease_until=None,
                leased_by=None,
                updated_at=bindparam("b_now", type_=UTCDateTime()),
            )
        )

        def write(conn: Connection) -> int:
            moved = conn.execute(move, moves).rowcount
            conn.execute(insert(attempts), history)
            for claim, outcome in done:
                if outcome.pause_until is not None:
                    conn.execute(self._pause(claim.connector, outcome.pause_until, outcome.error))
            return moved

        return await self.write(write)

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

    def _pause(self, connector: str, until: datetime, reason: str | None) -> Any:
        stmt = self._insert(connector_state).values(
            connector=connector,
            state={},
            paused_until=until,
            pause_reason=reason,
            updated_at=utcnow(),
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["connector"],
            set_={"paused_until": until, "pause_reason": reason, "updated_at": utcnow()},
        )
        return stmt

    # -- connector links and state ------------------------------------------------------------

    async def get_link(self, connector: str, key: str) -> Any:
        async with self.engine.connect() as conn:
            return await conn.scalar(
                select(links.c.value).where(links.c.connector == connector, links.c.key == key)
            )

    async def set_link(self, connector: str, key: str, value: Any) -> None:
        now = utcnow()
        stmt = self._insert(links).values(connector=connector, key=key, value=value, updated_at=now)
        stmt = stmt.on_conflict_do_update(
            index_elements=["connector", "key"], set_={"value": value, "updated_at": now}
        )
        await self.write(lambda conn: conn.execute(stmt))

    async def delete_link(self, connector: str, key: str) -> None:
        stmt = delete(links).where(links.c.connector == connector, links.c.key == key)
        await self.write(lambda conn: conn.execute(stmt))

    async def get_state(self, connector: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            value = await conn.scalar(
                select(connector_state.c.state).where(connector_state.c.connector == connector)
            )
            return dict(value or {})

    async def set_state(self, connector: str, state: dict[str, Any]) -> None:
        now = utcnow()
        stmt = self._insert(connector_state).values(
            connector=connector, state=state, updated_at=now
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["connector"], set_={"state": state, "updated_at": now}
        )
        await self.write(lambda conn: conn.execute(stmt))

    # -- inspection ---------------------------------------------------------------------------

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def delivery_counts(self) -> dict[tuple[str, str], int]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(deliveries.c.connector, deliveries.c.state, func.count()).group_by(
                    deliveries.c.connector, deliveries.c.state
                )
            )
            return {(r[0], r[1]): int(r[2]) for r in rows}
