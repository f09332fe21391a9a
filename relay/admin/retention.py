"""Data lifecycle: purge what is past its retention, erase what mentions a phone number.

Both delete events (their deliveries, attempts and numbers go with them by foreign-key cascade)
but never one with a delivery still pending or running: work in flight is not data at rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, delete, exists, func, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.config import Settings
from relay.live_config import LiveConfig
from relay.store.records import Store
from relay.store.states import ACTIVE, DeliveryState
from relay.store.tables import (
    attempts,
    circuit_transitions,
    deliveries,
    event_numbers,
    events,
    incidents,
    links,
    rejections,
    utcnow,
)
from relay.wildix import numbers

log = logging.getLogger("relay.lifecycle")
_BATCH = 1000

_busy = exists().where(deliveries.c.event_id == events.c.id, deliveries.c.state.in_(ACTIVE))
_running = exists().where(
    deliveries.c.event_id == events.c.id, deliveries.c.state == DeliveryState.RUNNING
)


@dataclass
class Purged:
    events: int = 0
    rejections: int = 0
    spared: int = 0  # past retention but with work in flight; purged on a later run
    incidents: int = 0  # resolved ones
    transitions: int = 0  # circuit history


async def _delete_events(store: Store, conds: list[ColumnElement[bool]]) -> int:
    """Delete in batches so a large purge never holds one long write lock."""
    total = 0
    while True:
        async with store.engine.begin() as conn:
            ids = list(await conn.scalars(select(events.c.id).where(*conds, ~_busy).limit(_BATCH)))
            if not ids:
                return total
            await conn.execute(delete(events).where(events.c.id.in_(ids)))
        total += len(ids)


async def purge(store: Store, settings: Settings, *, now: datetime | None = None) -> Purged:
    """Apply each integration's ``retention`` (default ``retention.events``), then the
    rejections', and the resolved incidents' and circuit history's."""
    now = now or utcnow()
    result = Purged()
    default = settings.retention.events
    plans: list[tuple[ColumnElement[bool], float]] = []
    for iid, integ in settings.integrations.items():
        keep = integ.retention or default
        if keep:
            plans.append((events.c.integration_id == iid, keep))
    if default:  # events of integrations since removed from the configuration
        plans.append((events.c.integration_id.not_in(list(settings.integrations)), default))
    for which, keep in plans:
        old = [which, events.c.received_at < now - timedelta(seconds=keep)]
        result.events += await _delete_events(store, old)
        async with store.engine.connect() as conn:
            result.spared += int(
                await conn.scalar(select(func.count()).select_from(events).where(*old)) or 0
            )
    if settings.retention.rejections:
        cutoff = now - timedelta(seconds=settings.retention.rejections)
        async with store.engine.begin() as conn:
            gone = await conn.execute(delete(rejections).where(rejections.c.received_at < cutoff))
            result.rejections = gone.rowcount
    if settings.retention.incidents:  # an open incident is kept whatever its age
        cutoff = now - timedelta(seconds=settings.retention.incidents)
        async with store.engine.begin() as conn:
            gone = await conn.execute(delete(incidents).where(incidents.c.resolved_at < cutoff))
            result.incidents = gone.rowcount
            gone = await conn.execute(
                delete(circuit_transitions).where(circuit_transitions.c.at < cutoff)
            )
            result.transitions = gone.rowcount
    if result.events or result.rejections or result.spared or result.incidents:
        log.info(
            "purged %d events, %d rejections, %d resolved incidents and %d circuit transitions"
            " past retention (%d spared: work in flight)",
            result.events,
            result.rejections,
            result.incidents,
            result.transitions,
            result.spared,
        )
    return result


async def purge_forever(store: Store, live: LiveConfig, stop: asyncio.Event) -> None:
    """Purge now, then every ``retention.interval``, until ``stop`` is set; each round with
    the config in force then (a reload may change the retention periods)."""
    while not stop.is_set():
        settings = live.current
        try:
            await purge(store, settings)
        except Exception as exc:  # the database is away; the next round will catch up
            log.error("purge failed: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.retention.interval)


@dataclass
class Erased:
    numbers: list[str]
    events: list[tuple[int, str, str]] = field(default_factory=list)  # id, integration, type
    deliveries: int = 0
    attempts: int = 0
    rejections: int = 0
    links: int = 0
    skipped_running: list[int] = field(default_factory=list)


async def erase(store: Store, phones: list[str], *, dry_run: bool = False) -> Erased:
    """Remove stored events, rejected bodies and connector links that mention these numbers."""
    normalized = []
    for phone in phones:
        number = numbers.normalize(phone)
        if number is None:
            raise ValueError(f"not a phone number: {phone!r}")
        normalized.append(number)
    out = Erased(numbers=sorted(set(normalized)))
    mentions = numbers.pattern(out.numbers)
    async with store.engine.begin() as conn:
        hit = select(event_numbers.c.event_id).where(event_numbers.c.number.in_(out.numbers))
        rows = (
            await conn.execute(
                select(
                    events.c.id, events.c.integration_id, events.c.type, _running.label("attempted")
                )
                .where(events.c.id.in_(hit))
                .order_by(events.c.id)
            )
        ).all()
        # Pending deliveries go with their event (the number must not be sent on); one being
        # attempted right now is left to finish, and reported, so a second run completes it.
        out.skipped_running = [r.id for r in rows if r.attempted]
        out.events = [(r.id, r.integration_id, r.type) for r in rows if not r.attempted]
        ids = [r[0] for r in out.events]
        if ids:
            dels = select(deliveries.c.id).where(deliveries.c.event_id.in_(ids))
            out.deliveries = await _count(conn, dels)
            out.attempts = await _count(
                conn, select(attempts.c.id).where(attempts.c.delivery_id.in_(dels))
            )
        rejected = [
            r.id
            for r in await conn.execute(
                select(rejections.c.id, rejections.c.body_excerpt).where(
                    rejections.c.body_excerpt.is_not(None)
                )
            )
            if mentions.search(bytes(r.body_excerpt))
        ]
        out.rejections = len(rejected)
        like = [links.c.key.contains(n, autoescape=True) for n in out.numbers]
        linked = [
            (r.connector, r.key)
            for r in await conn.execute(select(links.c.connector, links.c.key).where(or_(*like)))
            if mentions.search(r.key.encode())
        ]
        out.links = len(linked)
        if dry_run:
            return out
        if ids:
            await conn.execute(delete(events).where(events.c.id.in_(ids)))
        if rejected:
            await conn.execute(delete(rejections).where(rejections.c.id.in_(rejected)))
        if linked:
            await conn.execute(
                delete(links).where(tuple_(links.c.connector, links.c.key).in_(linked))
            )
    if running := out.skipped_running:
        log.warning("erase skipped %d events with a delivery in flight", len(running))
    return out


async def _count(conn: AsyncConnection, query: Select[Any]) -> int:
    return int(await conn.scalar(select(func.count()).select_from(query.subquery())) or 0)
