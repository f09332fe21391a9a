"""The delivery queue: claim due deliveries under a lease, record what each attempt came to.

Retry state lives on the delivery row (the procrastinate way): state, attempts, next attempt,
lease. A claim is a lease, so a crashed worker's claims return when it runs out. The hot
statements are each backend's own (relay.store.sqlite, relay.store.postgres; their SQL is in
relay/store/sql/); what is portable (release, reading pauses) stays in SQLAlchemy Core here.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from relay.store.states import REFUNDED, DeliveryState, OutcomeKind
from relay.store.tables import connector_state, deliveries, utcnow

if TYPE_CHECKING:
    from relay.store.backend import Backend


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

    state: DeliveryState  # succeeded | pending | dead
    kind: OutcomeKind
    started_at: datetime
    duration_ms: int
    next_attempt_at: datetime | None = None
    status_code: int | None = None
    error: str | None = None
    pause_until: datetime | None = None


def aware(value: datetime) -> datetime:
    """UTC-aware, as ``UTCDateTime`` stores it: a naive datetime is taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def next_state(outcome: Outcome, now: datetime) -> tuple[int, datetime | None, datetime | None]:
    """(attempts refund, next attempt, completed at) for a delivery's row."""
    # Waiting out a quota, or a target's open circuit, is not a failed attempt.
    refund = 1 if outcome.kind in REFUNDED else 0
    if outcome.state == DeliveryState.PENDING:
        return refund, outcome.next_attempt_at or now, None
    return refund, None, now


def pauses(done: Sequence[tuple[Claim, Outcome]]) -> list[tuple[str, datetime, str | None]]:
    """(connector, until, reason) of the outcomes that pause their connector."""
    return [
        (claim.connector, outcome.pause_until, outcome.error)
        for claim, outcome in done
        if outcome.pause_until is not None
    ]


class QueueSession(Protocol):
    async def claim(
        self, connector: str, limit: int, *, worker: str, lease: float, coalesce: bool = False
    ) -> list[Claim]: ...

    async def finish_batch(self, done: Sequence[tuple[Claim, Outcome]], *, worker: str) -> int: ...


class DeliveryQueue:
    """The dispatch side of the store; ``Store`` provides ``backend`` and ``engine``."""

    backend: Backend
    engine: AsyncEngine

    async def claim(
        self, connector: str, limit: int, *, worker: str, lease: float, coalesce: bool = False
    ) -> list[Claim]:
        """Lease up to ``limit`` due deliveries whose earlier siblings (same key) are done.

        Claims whose lease ran out (a crashed worker's) come first. Each pick walks the
        (state, connector, next_attempt_at, id) index in due order and stops at its limit, so
        a long backlog costs nothing per claim. With ``coalesce`` (the connector's
        ``coalesce_calls``), the pending deliveries of those calls that a newer pending state of
        the same call makes pointless are first marked superseded, in the same transaction.
        """
        return await self.backend.claim(
            connector, limit, worker=worker, lease=lease, coalesce=coalesce
        )

    async def finish(self, claim: Claim, outcome: Outcome, *, worker: str) -> bool:
        """Record one attempt; see ``finish_batch``."""
        return await self.backend.finish_batch([(claim, outcome)], worker=worker) == 1

    async def finish_batch(self, done: Sequence[tuple[Claim, Outcome]], *, worker: str) -> int:
        """Record attempts and move their deliveries on, in one transaction.

        A row whose lease another worker has taken over is left alone (its attempt is still
        recorded as history); returns how many deliveries this worker actually moved on.
        """
        return await self.backend.finish_batch(done, worker=worker)

    def session(self) -> AbstractAsyncContextManager[QueueSession]:
        """``claim`` and ``finish_batch`` for a run of calls, on one connection where the
        database needs one (PostgreSQL: a pool checkout costs more than the statement)."""
        return self.backend.session()

    async def release(self, delivery_ids: Sequence[int], *, worker: str) -> int:
        """Hand unfinished claims back (graceful shutdown) without counting an attempt."""
        if not delivery_ids:
            return 0
        stmt = (
            update(deliveries)
            .where(
                deliveries.c.id.in_(delivery_ids),
                deliveries.c.state == DeliveryState.RUNNING,
                deliveries.c.leased_by == worker,
            )
            .values(
                state=DeliveryState.PENDING,
                attempts=deliveries.c.attempts - 1,
                lease_until=None,
                leased_by=None,
                next_attempt_at=utcnow(),
                updated_at=utcnow(),
            )
        )
        return await self.backend.write(lambda conn: conn.execute(stmt).rowcount)

    async def paused_connectors(self) -> dict[str, datetime]:
        now = utcnow()
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(connector_state.c.connector, connector_state.c.paused_until).where(
                    connector_state.c.paused_until > now
                )
            )
            return {r.connector: r.paused_until for r in rows}
