"""The overview's charts: events per integration, attempts and latency per connector, over time.

Counted in the database from the store's own rows (not Prometheus, which a dashboard on its own
may not have). Time buckets are a ``CASE`` over the bucket boundaries, which SQLite and
PostgreSQL evaluate alike; the latency percentiles are nearest-rank, from window functions both
have. Each query reads one time window through an index (events by integration and time,
attempts by start time), so its cost follows the window's rows, not the table's.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec
from sqlalchemy import ColumnElement, Integer, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.admin.filters import BadFilter
from relay.config import Settings
from relay.store.records import Store
from relay.store.states import OutcomeKind
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
    OutcomeKind.DEAD: "dead",
}
PERCENTILES = (50, 95)


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
    p50_ms: int | None  # nearest-rank percentiles of the delivered attempts' durations
    p95_ms: int | None

    @property
    def total(self) -> int:
        return sum(self.delivered) + sum(self.retried) + sum(self.dead)


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


def _bucket(column: ColumnElement[datetime], bounds: list[datetime]) -> ColumnElement[int]:
    whens = [(column < bound, i) for i, bound in enumerate(bounds)]
    return case(*whens, else_=len(bounds)).label("bucket")


async def charts(store: Store, settings: Settings, range_key: str | None = None) -> Charts:
    r = pick_range(range_key)
    start, bounds = _window(r, utcnow())
    received = _bucket(events.c.received_at, bounds)
    started = _bucket(attempts.c.started_at, bounds)
    per_integration: dict[str, list[int]] = defaultdict(lambda: [0] * r.buckets)
    per_connector: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * r.buckets)
    async with store.engine.connect() as conn:
        rows = await conn.execute(
            select(events.c.integration_id, received, func.count())
            .where(events.c.received_at >= start)
            .group_by(events.c.integration_id, received)
        )
        for integration, bucket, n in rows:
            per_integration[integration][int(bucket)] = int(n)
        rows = await conn.execute(
            select(deliveries.c.connector, attempts.c.outcome, started, func.count())
            .select_from(attempts.join(deliveries, deliveries.c.id == attempts.c.delivery_id))
            .where(attempts.c.started_at >= start)
            .group_by(deliveries.c.connector, attempts.c.outcome, started)
        )
        for connector, outcome, bucket, n in rows:
            if outcome in SERIES:
                per_connector[(connector, SERIES[outcome])][int(bucket)] = int(n)
        latency = await _percentiles(conn, start)
    configured = list(settings.integrations)
    return Charts(
        range=r.key,
        label=r.label,
        buckets=[start, *bounds],
        step_seconds=int(r.step.total_seconds()),
        integrations=[
            IntegrationChart(
                id=iid,
                name=(i.name if (i := settings.integrations.get(iid)) else None),
                counts=list(per_integration.get(iid, [0] * r.buckets)),
            )
            for iid in configured + sorted(set(per_integration) - set(configured))
        ],
        connectors=[
            ConnectorChart(
                name=name,
                **{
                    series: list(per_connector.get((name, series), [0] * r.buckets))
                    for series in SERIES.values()
                },
                p50_ms=latency.get((name, 50)),
                p95_ms=latency.get((name, 95)),
            )
            for name in settings.connectors
        ],
    )


async def _percentiles(conn: AsyncConnection, start: datetime) -> dict[tuple[str, int], int]:
    """(connector, percentile) → ms: the delivered attempt at rank ceil(p% of n) by duration."""
    ranked = (
        select(
            deliveries.c.connector,
            attempts.c.duration_ms,
            func.row_number()
            .over(partition_by=deliveries.c.connector, order_by=attempts.c.duration_ms)
            .label("rank"),
            func.count().over(partition_by=deliveries.c.connector).label("n"),
        )
        .select_from(attempts.join(deliveries, deliveries.c.id == attempts.c.delivery_id))
        .where(attempts.c.started_at >= start, attempts.c.outcome == OutcomeKind.SUCCEEDED)
        .subquery()
    )
    # ceil(n·p/100) in integer arithmetic, the same on both databases
    ranks = {p: ((ranked.c.n * p + 99) // 100).cast(Integer) for p in PERCENTILES}
    rows = await conn.execute(
        select(ranked.c.connector, ranked.c.duration_ms, ranked.c.rank, ranked.c.n).where(
            or_(*(ranked.c.rank == rank for rank in ranks.values()))
        )
    )
    out: dict[tuple[str, int], int] = {}
    for connector, duration, rank, n in rows:
        for p in PERCENTILES:
            if rank == (n * p + 99) // 100:
                out[(connector, p)] = int(duration)
    return out
