"""The delivery queue: claim due deliveries under a lease, record what each attempt came to.

Retry state lives on the delivery row (the procrastinate way): state, attempts, next attempt,
lease. A claim is a lease, so a crashed worker's claims return when it runs out; on PostgreSQL,
concurrent workers skip each other's rows (``FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import and_, bindparam, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import aliased

from relay.models import (
    DeliveryRow,
    UTCDateTime,
    attempts,
    connector_state,
    deliveries,
    events,
    utcnow,
)

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


class DeliveryQueue:
    """The dispatch side of the store; ``Store`` provides ``write``, ``dialect`` and ``_insert``."""

    dialect: str
    _insert: Any

    if TYPE_CHECKING:

        async def write(self, work: Callable[[Connection], T]) -> T: ...

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
