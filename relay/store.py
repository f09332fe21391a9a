"""The durable store: record events with their deliveries, claim due work, record outcomes.

Every write that acknowledges something to the outside world (an HTTP 200, an SQS delete, a
connector's success) is one transaction. Claims are leases, so a crashed worker's work returns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import aliased

from relay import numbers
from relay.models import (
    AttemptRow,
    ConnectorStateRow,
    DeliveryRow,
    EventNumberRow,
    EventRow,
    LinkRow,
    RejectionRow,
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


def utcnow() -> datetime:
    return datetime.now(UTC)


def ordering_key(connector: str, event: Event) -> str:
    """Deliveries of one subject (a call, a user's presence) to one connector run in order."""
    return f"{connector}|{event.integration_id}|{event.call_id or event.id}"


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

    # -- ingest -------------------------------------------------------------------------------

    async def record(
        self,
        event: Event,
        connectors: Sequence[str],
        *,
        transport: str,
        meta: dict[str, Any] | None = None,
    ) -> Recorded:
        """Store the event and one delivery per matched connector, atomically; dedupe on bytes."""
        now = utcnow()
        sha = hashlib.sha256(event.raw).hexdigest()
        stmt = (
            self._insert(events)
            .values(
                integration_id=event.integration_id,
                type=event.type,
                subject_id=event.id,
                call_id=event.call_id,
                body_sha256=sha,
                raw=event.raw,
                occurred_at=event.time,
                received_at=now,
                transport=transport,
                transport_meta=meta or {},
            )
            .on_conflict_do_nothing(index_elements=["integration_id", "body_sha256"])
            .returning(events.c.id)
        )
        async with self.engine.begin() as conn:
            event_id = (await conn.execute(stmt)).scalar()
            if event_id is None:
                existing = await conn.scalar(
                    select(events.c.id).where(
                        events.c.integration_id == event.integration_id,
                        events.c.body_sha256 == sha,
                    )
                )
                return Recorded(int(existing), True, 0)
            if connectors:
                await conn.execute(
                    insert(deliveries), self._delivery_rows(event_id, event, connectors, now)
                )
            if found := numbers.in_data(event.data):
                await conn.execute(
                    insert(event_numbers), [{"event_id": event_id, "number": n} for n in found]
                )
        return Recorded(int(event_id), False, len(connectors))

    @staticmethod
    def _delivery_rows(
        event_id: int, event: Event, connectors: Sequence[str], now: datetime
    ) -> list[dict[str, Any]]:
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
            for name in connectors
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
        async with self.engine.begin() as conn:
            result = await conn.execute(
                insert(rejections).returning(rejections.c.id),
                {
                    "received_at": utcnow(),
                    "transport": transport,
                    "integration_id": integration_id,
                    "reason": reason[:255],
                    "status_code": status_code,
                    "remote": remote,
                    "body_sha256": hashlib.sha256(body).hexdigest() if body is not None else None,
                    "body_excerpt": body[:excerpt_limit] if body is not None else None,
                    "transport_meta": meta or {},
                },
            )
            return int(result.scalar_one())

    # -- dispatch -----------------------------------------------------------------------------

    async def claim(self, connector: str, limit: int, *, worker: str, lease: float) -> list[Claim]:
        """Lease up to ``limit`` due deliveries whose earlier siblings (same key) are done."""
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
        due = or_(
            and_(d.c.state == "pending", d.c.next_attempt_at <= now),
            and_(d.c.state == "running", d.c.lease_until < now),
        )
        pick = (
            select(d.c.id)
            .where(d.c.connector == connector, due, ~earlier)
            .order_by(d.c.next_attempt_at, d.c.id)
            .limit(limit)
        )
        if self.dialect == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        stmt = (
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
        async with self.engine.begin() as conn:
            rows = (await conn.execute(stmt)).all()
            if not rows:
                return []
            bodies = dict(
                (
                    await conn.execute(
                        select(events.c.id, events.c.raw).where(
                            events.c.id.in_({r.event_id for r in rows})
                        )
                    )
                ).all()
            )
        rows.sort(key=lambda r: r.id)
        return [
            Claim(
                r.id, r.event_id, connector, r.integration_id, r.attempts, bytes(bodies[r.event_id])
            )
            for r in rows
        ]

    async def finish(self, claim: Claim, outcome: Outcome, *, worker: str) -> bool:
        """Record the attempt and move the delivery on; False if our lease had been taken over."""
        now = utcnow()
        values: dict[str, Any] = {
            "state": outcome.state,
            "lease_until": None,
            "leased_by": None,
            "updated_at": now,
            "last_error": outcome.error,
        }
        if outcome.state == "pending":
            values["next_attempt_at"] = outcome.next_attempt_at or now
        else:
            values["completed_at"] = now
        if outcome.kind == "paused":  # waiting out a quota is not a failed attempt
            values["attempts"] = deliveries.c.attempts - 1
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(deliveries)
                .where(
                    deliveries.c.id == claim.delivery_id,
                    deliveries.c.state == "running",
                    deliveries.c.leased_by == worker,
                )
                .values(**values)
            )
            await conn.execute(
                insert(attempts),
                {
                    "delivery_id": claim.delivery_id,
                    "number": claim.attempt,
                    "started_at": outcome.started_at,
                    "duration_ms": outcome.duration_ms,
                    "outcome": outcome.kind,
                    "status_code": outcome.status_code,
                    "error": outcome.error,
                    "worker": worker,
                },
            )
            if outcome.pause_until is not None:
                await self._set_pause(conn, claim.connector, outcome.pause_until, outcome.error)
        return result.rowcount == 1

    async def release(self, delivery_ids: Sequence[int], *, worker: str) -> int:
        """Hand unfinished claims back (graceful shutdown) without counting an attempt."""
        if not delivery_ids:
            return 0
        async with self.engine.begin() as conn:
            result = await conn.execute(
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
            return result.rowcount

    async def paused_connectors(self) -> dict[str, datetime]:
        now = utcnow()
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(connector_state.c.connector, connector_state.c.paused_until).where(
                    connector_state.c.paused_until > now
                )
            )
            return {r.connector: r.paused_until for r in rows}

    async def _set_pause(
        self, conn: AsyncConnection, connector: str, until: datetime, reason: str | None
    ) -> None:
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
        await conn.execute(stmt)

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
        async with self.engine.begin() as conn:
            await conn.execute(stmt)

    async def delete_link(self, connector: str, key: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                delete(links).where(links.c.connector == connector, links.c.key == key)
            )

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
        async with self.engine.begin() as conn:
            await conn.execute(stmt)

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
