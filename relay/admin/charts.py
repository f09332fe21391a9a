"""The overview's charts: events per integration, attempts and latency per connector, over time.

Counted in the database from the store's own rows (not Prometheus, which a dashboard on its own
may not have). Time buckets are a ``CASE`` over the bucket boundaries, which SQLite and
PostgreSQL evaluate alike; latency percentiles are nearest-rank over the delivered attempts'
durations, counted per (coarsened) duration in SQL and ranked here. Each query reads a time
window through an index (events by integration and time, attempts by start time), and buckets
that can no longer change are kept in memory, so a refresh reads only the last few minutes.
"""

from __future__ import annotations

import weakref
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import msgspec
from cachetools import TTLCache
from sqlalchemy import ColumnElement, Integer, case, func, literal, select

from relay.admin.filters import BadFilter
from relay.config import Settings
from relay.store.records import Store
from relay.store.states import DeliveryState, OutcomeKind
from relay.store.tables import attempts, deliveries, events, utcnow


@dataclass(frozen=True, slots=True)
class Range:
    """A chart window: ``buckets`` bars of ``step`` each, the last one ending after now."""

    key: str
    label: str  # as the page says it: "in the last 24 h"
    step: timedelta
    buckets: int


RANGES: dict[str, Range] = {
    r.key: r
    for r in (
        Range("1h", "1 h", timedelta(minutes=5), 12),
        Range("24h", "24 h", timedelta(hours=1), 24),
        Range("7d", "7 d", timedelta(hours=6), 28),
    )
}
DEFAULT_RANGE = "24h"
# attempt outcome → the connector chart's series (a pause is neither: it used no attempt)
SERIES = {
    OutcomeKind.SUCCEEDED: "delivered",
    OutcomeKind.RETRY: "retried",
    OutcomeKind.DEAD: OutcomeKind.DEAD.value,
}
# deliveries a coalescing connector left out for a newer state of their call: no attempt, no
# failure, drawn apart from the dead ones (by when they were superseded)
SUPERSEDED = DeliveryState.SUPERSEDED.value


class IntegrationChart(msgspec.Struct, kw_only=True):
    id: str
    name: str | None
    counts: list[int]  # events received per bucket, oldest first

    @property
    def total(self) -> int:
        return sum(self.counts)


class ConnectorChart(msgspec.Struct, kw_only=True):
    name: str
    delivered: list[int]  # attempts per bucket that delivered
    retried: list[int]  # that failed and will be tried again
    dead: list[int]  # that failed for good
    superseded: list[int]  # deliveries left out for a newer state of their call (no attempt)
    p50_ms: int | None  # nearest-rank percentiles of the delivered attempts' durations
    p95_ms: int | None

    @property
    def total(self) -> int:
        return sum(self.delivered) + sum(self.retried) + sum(self.dead) + sum(self.superseded)


class Charts(msgspec.Struct, kw_only=True):
    range: str
    label: str
    buckets: list[datetime]  # each bucket's start, oldest first
    step_seconds: int
    integrations: list[IntegrationChart]
    connectors: list[ConnectorChart]


def pick_range(key: str | None) -> Range:
    if not key:
        return RANGES[DEFAULT_RANGE]
    if key not in RANGES:
        raise BadFilter(f"range must be one of {', '.join(RANGES)}, not {key[:20]!r}")
    return RANGES[key]


def _window(r: Range, now: datetime) -> tuple[datetime, list[datetime]]:
    """Bucket boundaries on whole steps (bars stay put between refreshes); the first is start."""
    step = int(r.step.total_seconds())
    epoch = datetime(1970, 1, 1, tzinfo=now.tzinfo)
    end = epoch + timedelta(seconds=(int((now - epoch).total_seconds()) // step + 1) * step)
    start = end - r.step * r.buckets
    return start, [start + r.step * i for i in range(1, r.buckets)]


def _bucket(
    column: ColumnElement[datetime], bounds: list[datetime], end: datetime
) -> ColumnElement[int]:
    """Which bucket a time falls in: nested CASEs halving the boundaries, so a row costs a
    handful of comparisons rather than one per bucket (the query keeps times before ``end``)."""

    def within(first: int, last: int) -> ColumnElement[int]:
        if first == last:
            return literal(first, Integer)
        middle = (first + last + 1) // 2  # buckets first..middle-1 end before bounds[middle-1]
        return case(
            (column < bounds[middle - 1], within(first, middle - 1)),
            else_=within(middle, last),
        )

    if not bounds:  # one bucket: a CASE still, so the query groups by an expression
        return case((column < end, literal(0, Integer)), else_=literal(0, Integer)).label("bucket")
    return within(0, len(bounds)).label("bucket")


def _coarse(ms: ColumnElement[int]) -> ColumnElement[int]:
    """Durations to two or three significant digits (integer arithmetic, alike on both
    databases): a few hundred values per bucket to send, and percentiles within 1 %."""
    steps = [(ms < 1000, ms), (ms < 10_000, ms // 10 * 10), (ms < 100_000, ms // 100 * 100)]
    return case(*steps, else_=ms // 1000 * 1000).label("ms")


@dataclass(slots=True)
class _Counts:
    """One time bucket's figures, as the database gave them."""

    events: Counter[str] = field(default_factory=Counter)  # integration → events
    attempts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (connector, series)
    durations: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))


# Buckets that ended a while ago no longer change (an attempt is recorded when it ends, its
# start time up to its time limit earlier): each process keeps them, per store, for 6 hours, so
# a refresh reads only the newest buckets' rows.
SETTLED = timedelta(minutes=5)
KEPT = 6 * 3600.0
_settled: weakref.WeakKeyDictionary[Store, TTLCache[tuple[datetime, timedelta], _Counts]] = (
    weakref.WeakKeyDictionary()
)


async def _counts(store: Store, starts: list[datetime], step: timedelta) -> list[_Counts]:
    """Each bucket's figures: the settled ones from memory, the rest in one read."""
    kept = _settled.setdefault(store, TTLCache(maxsize=4096, ttl=KEPT))
    now = utcnow()
    found = {b: kept.get((b, step)) for b in starts}
    missing = [b for b in starts if found[b] is None]
    if missing:  # read from the oldest one missing on (they are the newest but for expiry)
        span = starts[starts.index(missing[0]) :]
        fresh = await _read(store, span[0], span[1:], starts[-1] + step)
        for b, counts in zip(span, fresh, strict=True):
            found[b] = counts
            if b + step + SETTLED < now:
                kept[(b, step)] = counts
    return [found[b] or _Counts() for b in starts]


async def _read(
    store: Store, start: datetime, bounds: list[datetime], end: datetime
) -> list[_Counts]:
    """Buckets from ``start`` to ``end`` cut at ``bounds``, in one query per table."""
    out = [_Counts() for _ in range(len(bounds) + 1)]
    received = _bucket(events.c.received_at, bounds, end)
    started = _bucket(attempts.c.started_at, bounds, end)
    ms = _coarse(attempts.c.duration_ms)
    async with store.engine.connect() as conn:
        rows = await conn.execute(
            select(events.c.integration_id, received, func.count())
            .where(events.c.received_at >= start, events.c.received_at < end)
            .group_by(events.c.integration_id, received)
        )
        for integration, bucket, n in rows:
            out[int(bucket)].events[integration] += int(n)
        rows = await conn.execute(
            select(deliveries.c.connector, attempts.c.outcome, started, ms, func.count())
            .select_from(attempts.join(deliveries, deliveries.c.id == attempts.c.delivery_id))
            .where(attempts.c.started_at >= start, attempts.c.started_at < end)
            .group_by(deliveries.c.connector, attempts.c.outcome, started, ms)
        )
        for connector, outcome, bucket, duration, n in rows:
            counts = out[int(bucket)]
            if outcome in SERIES:
                counts.attempts[(connector, SERIES[outcome])] += int(n)
            if outcome == OutcomeKind.SUCCEEDED:
                counts.durations[connector][int(duration)] += int(n)
        done = _bucket(deliveries.c.completed_at, bounds, end)
        rows = await conn.execute(
            select(deliveries.c.connector, done, func.count())
            .where(
                deliveries.c.state == DeliveryState.SUPERSEDED,
                deliveries.c.completed_at >= start,
                deliveries.c.completed_at < end,
            )
            .group_by(deliveries.c.connector, done)
        )
        for connector, bucket, n in rows:
            out[int(bucket)].attempts[(connector, SUPERSEDED)] += int(n)
    return out


def _percentile(durations: Counter[int], p: int) -> int | None:
    """Nearest rank: the smallest duration with at least p % of them at or below it."""
    total = sum(durations.values())
    if not total:
        return None
    rank, seen = -(-total * p // 100), 0
    for duration in sorted(durations):
        seen += durations[duration]
        if seen >= rank:
            return duration
    return None  # pragma: no cover (seen reaches total)


async def charts(store: Store, settings: Settings, range_key: str | None = None) -> Charts:
    r = pick_range(range_key)
    start, bounds = _window(r, utcnow())
    starts = [start, *bounds]
    buckets = await _counts(store, starts, r.step)
    seen = {i for b in buckets for i in b.events}
    configured = list(settings.integrations)
    latency: dict[str, Counter[int]] = defaultdict(Counter)
    for b in buckets:
        for connector, durations in b.durations.items():
            latency[connector].update(durations)
    return Charts(
        range=r.key,
        label=r.label,
        buckets=starts,
        step_seconds=int(r.step.total_seconds()),
        integrations=[
            IntegrationChart(
                id=iid,
                name=(i.name if (i := settings.integrations.get(iid)) else None),
                counts=[b.events[iid] for b in buckets],
            )
            for iid in configured + sorted(seen - set(configured))
        ],
        connectors=[
            ConnectorChart(
                name=name,
                **{
                    series: [b.attempts[(name, series)] for b in buckets]
                    for series in (*SERIES.values(), SUPERSEDED)
                },
                p50_ms=_percentile(latency[name], 50),
                p95_ms=_percentile(latency[name], 95),
            )
            for name in settings.connectors
        ],
    )
