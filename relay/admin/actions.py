"""What an operator does to deliveries: retry one now, cancel one, replay stored events.

Each is one short transaction on the same tables the dispatcher uses, so the API, the dashboard
and the CLI (working on the database directly, with or without a running service) agree.
"""

from __future__ import annotations

import getpass
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from relay import routing
from relay.admin import schemas as s
from relay.admin.filters import EventFilter, event_conditions, is_row_id
from relay.config import Settings
from relay.store.records import Store
from relay.store.rows import delivery_rows
from relay.store.states import DeliveryState
from relay.store.tables import attempts, deliveries, events, manual_retries, utcnow
from relay.wildix import InvalidEvent, parse

RETRYABLE = (
    DeliveryState.PENDING,
    DeliveryState.DEAD,
    DeliveryState.CANCELLED,
    DeliveryState.SUPERSEDED,
)
CANCELLABLE = (DeliveryState.PENDING, DeliveryState.DEAD)
_BATCH = 500


class ActionError(Exception):
    """The request cannot be carried out; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def cli_operator() -> str:
    """Who retried from the CLI, as the history shows it: the OS user when there is one."""
    try:
        return f"CLI ({getpass.getuser()})"
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        return "CLI"


async def _refuse(store: Store, delivery_id: int, verb: str) -> ActionError:
    async with store.engine.connect() as conn:
        state = await conn.scalar(select(deliveries.c.state).where(deliveries.c.id == delivery_id))
    if state is None:
        return ActionError(404, f"no delivery {delivery_id}")
    hint = {
        DeliveryState.RUNNING: "it is being attempted right now",
        DeliveryState.SUCCEEDED: "it already succeeded; replay its event to send it again",
        DeliveryState.CANCELLED: "it is already cancelled",
    }.get(state, "")
    return ActionError(409, f"cannot {verb} delivery {delivery_id} ({state}): {hint}".rstrip(": "))


async def _move(
    store: Store,
    delivery_id: int,
    verb: str,
    allowed: tuple[DeliveryState, ...],
    *,
    then: Callable[[AsyncConnection, DeliveryState, int], Awaitable[None]] | None = None,
    **values: Any,
) -> None:
    """One guarded state change; explain a refusal (404 missing, 409 wrong state).

    ``then(conn, state before, attempts before)`` runs in the same transaction once it moved."""
    if not is_row_id(delivery_id):
        raise ActionError(404, f"no delivery {delivery_id}")
    now = utcnow()
    async with store.engine.begin() as conn:
        before = (
            await conn.execute(
                select(deliveries.c.state, deliveries.c.attempts).where(
                    deliveries.c.id == delivery_id
                )
            )
        ).first()
        result = await conn.execute(
            update(deliveries)
            .where(deliveries.c.id == delivery_id, deliveries.c.state.in_(allowed))
            .values(**values, updated_at=now)
        )
        if result.rowcount == 1 and then is not None and before is not None:
            await then(conn, DeliveryState(before.state), int(before.attempts))
    if result.rowcount != 1:
        raise await _refuse(store, delivery_id, verb)


async def retry(store: Store, delivery_id: int, *, by: str | None = None) -> None:
    """Due now; a dead, cancelled or superseded delivery also gets a fresh budget of
    ``max_attempts``.

    Its attempt numbers keep counting (#3 follows #2), and the history shows the retry, by
    ``by`` (who or what asked: the dashboard, the API, the CLI and its user)."""

    async def mark(conn: AsyncConnection, state: DeliveryState, tried: int) -> None:
        base = await conn.scalar(
            select(manual_retries.c.number_base)
            .where(manual_retries.c.delivery_id == delivery_id)
            .order_by(manual_retries.c.id.desc())
            .limit(1)
        )
        last = await conn.scalar(
            select(func.max(attempts.c.id)).where(attempts.c.delivery_id == delivery_id)
        )
        fresh = state is not DeliveryState.PENDING  # its count restarts (see ``attempts=``)
        await conn.execute(
            manual_retries.insert().values(
                delivery_id=delivery_id,
                requested_at=utcnow(),
                requested_by=by[:100] if by else None,
                after_attempt_id=last,
                number_base=int(base or 0) + (tried if fresh else 0),
            )
        )

    await _move(
        store,
        delivery_id,
        "retry",
        RETRYABLE,
        then=mark,
        # a delivery merely waiting for its next try keeps its count
        attempts=case(
            (deliveries.c.state == DeliveryState.PENDING, deliveries.c.attempts), else_=0
        ),
        state=DeliveryState.PENDING,
        next_attempt_at=utcnow(),
        lease_until=None,
        leased_by=None,
        completed_at=None,
    )


async def cancel(store: Store, delivery_id: int) -> None:
    """Stop a pending delivery, or acknowledge a dead one; it no longer holds up its call."""
    await _move(
        store,
        delivery_id,
        "cancel",
        CANCELLABLE,
        state=DeliveryState.CANCELLED,
        completed_at=utcnow(),
    )


async def replay(
    store: Store,
    settings: Settings,
    request: s.ReplayRequest,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> s.ReplayResult:
    """New deliveries for stored events, through today's routes or to one named connector.

    ``progress(done, total)`` is called after each batch of events.
    """
    if request.connector is not None and request.connector not in settings.connectors:
        raise ActionError(400, f"no connector named {request.connector!r}")
    if request.event_id is not None:
        if not is_row_id(request.event_id):
            raise ActionError(404, f"no event {request.event_id}")
        conds = [events.c.id == request.event_id]
    else:
        f = EventFilter(
            integration=request.integration,
            type=request.type,
            call_id=request.call_id,
            since=request.since,
            until=request.until,
        )
        if f.empty():
            raise ActionError(
                400, "give an event id or at least one filter (integration, type, call id, time)"
            )
        conds = event_conditions(f)
    async with store.engine.connect() as conn:
        total = int(await conn.scalar(select(func.count()).select_from(events).where(*conds)) or 0)
    if request.event_id is not None and total == 0:
        raise ActionError(404, f"no event {request.event_id}")

    created: Counter[str] = Counter()
    skipped, last = 0, 0
    while True:
        async with store.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(events.c.id, events.c.integration_id, events.c.raw)
                    .where(*conds, events.c.id > last)
                    .order_by(events.c.id)
                    .limit(_BATCH)
                )
            ).all()
        if not rows:
            break
        last, now, new = rows[-1].id, utcnow(), []
        for row in rows:
            try:
                event = parse(bytes(row.raw))
            except InvalidEvent:
                skipped += 1
                continue
            if request.connector is not None:
                targets = [request.connector]
            elif row.integration_id in settings.integrations:
                routes = settings.integrations[row.integration_id].routes
                targets = routing.targets(routes, event)
            else:
                targets = []
            if not targets:
                skipped += 1
            created.update(targets)
            new.extend(delivery_rows(row.id, event, targets, now))
        if new and not request.dry_run:
            await store.add_deliveries(new)
        if progress is not None:
            progress(len(rows), total)
    return s.ReplayResult(
        dry_run=request.dry_run,
        events=total,
        deliveries=sum(created.values()),
        by_connector=dict(sorted(created.items())),
        skipped=skipped,
    )
