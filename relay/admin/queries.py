"""Read-side queries behind the admin API, the dashboard, the CLI and the queue gauges.

Lists are newest first with a cursor on the id (stable while new rows arrive, unlike offsets).
Every free-text field that could echo a configured secret passes through the ``Redactor``.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import ColumnElement, LargeBinary, String, case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from relay.admin import history
from relay.admin import schemas as s
from relay.admin.filters import (
    BadFilter,
    EventFilter,
    check_limit,
    check_state,
    event_conditions,
    is_row_id,
    page_of,
    parse_cursor,
)
from relay.config import Settings
from relay.live_config import LiveConfig
from relay.store.records import Store, clip
from relay.store.states import ACTIVE, DeliveryState
from relay.store.tables import (
    connector_state,
    deliveries,
    event_numbers,
    events,
    rejections,
    utcnow,
)
from relay.wildix import InvalidEvent, parse

_DELIVERY_COLS = (
    deliveries.c.id,
    deliveries.c.event_id,
    deliveries.c.integration_id,
    deliveries.c.connector,
    deliveries.c.state,
    deliveries.c.attempts,
    deliveries.c.next_attempt_at,
    deliveries.c.last_error,
    deliveries.c.created_at,
    deliveries.c.updated_at,
    deliveries.c.completed_at,
    events.c.type.label("event_type"),
    events.c.call_id,
)
# A rejection as lists show it. Rows stored before their fields were cut at insert may hold a
# client's megabytes: the database sends at most these widths, so a page of 500 stays a few MB.
LISTED_EXCERPT = 1000  # bytes of the stored body, shown as text
_REJECTION_COLS = (
    rejections.c.id,
    rejections.c.received_at,
    rejections.c.transport,
    func.substr(rejections.c.integration_id, 1, 65, type_=String).label("integration_id"),
    func.substr(rejections.c.reason, 1, 256, type_=String).label("reason"),
    rejections.c.status_code,
    func.substr(rejections.c.remote, 1, 256, type_=String).label("remote"),
    func.substr(rejections.c.body_excerpt, 1, LISTED_EXCERPT, type_=LargeBinary).label(
        "body_excerpt"
    ),
    rejections.c.transport_meta["body_size"].as_string().label("body_size"),
)
_EVENT_COLS = (
    events.c.id,
    events.c.integration_id,
    events.c.type,
    events.c.call_id,
    events.c.subject_id,
    events.c.occurred_at,
    events.c.received_at,
    events.c.transport,
)


class Queries:
    def __init__(self, store: Store, settings: Settings | LiveConfig) -> None:
        self.store = store
        self.live = settings if isinstance(settings, LiveConfig) else LiveConfig(settings)

    @property
    def settings(self) -> Settings:
        """The config in force: a reload swaps it (relay.live_config)."""
        return self.live.current

    def redact(self, text: str | None) -> str | None:
        """Secrets out of a text we show, those of every config loaded since start-up too."""
        return None if text is None else self.live.redactor(text)

    # -- events -------------------------------------------------------------------------------

    async def events(
        self, f: EventFilter, *, cursor: str | None = None, limit: int = 50
    ) -> s.EventPage:
        limit, before = check_limit(limit), parse_cursor(cursor)
        conds = event_conditions(f)
        if before is not None:
            conds.append(events.c.id < before)
        stmt = select(*_EVENT_COLS).where(*conds).order_by(events.c.id.desc()).limit(limit + 1)
        async with self.store.engine.connect() as conn:
            rows, next_cursor = page_of(list((await conn.execute(stmt)).all()), limit)
            states = await _states_by_event(conn, [r.id for r in rows])
        items = [s.EventSummary(**r._asdict(), delivery_states=states.get(r.id, {})) for r in rows]
        return s.EventPage(items=items, next_cursor=next_cursor)

    async def event(self, event_id: int) -> s.EventDetail | None:
        if not is_row_id(event_id):
            return None
        async with self.store.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(*_EVENT_COLS, events.c.raw).where(events.c.id == event_id)
                )
            ).first()
            if row is None:
                return None
            states = await _states_by_event(conn, [event_id])
            dels = await self._deliveries(conn, [deliveries.c.event_id == event_id], asc=True)
            found = await conn.scalars(
                select(event_numbers.c.number).where(event_numbers.c.event_id == event_id)
            )
            numbers_found = sorted(found)
        raw = bytes(row.raw)
        try:
            body: Any = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            body = raw.decode("utf-8", "replace")
        fields = {k: v for k, v in row._asdict().items() if k != "raw"}
        return s.EventDetail(
            **fields,
            delivery_states=states.get(event_id, {}),
            raw=body,
            normalized=_normalized(raw),
            numbers=numbers_found,
            deliveries=dels,
        )

    # -- deliveries ---------------------------------------------------------------------------

    async def deliveries(
        self,
        *,
        state: str | None = None,
        connector: str | None = None,
        integration: str | None = None,
        event_id: int | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> s.DeliveryPage:
        limit, before = check_limit(limit), parse_cursor(cursor)
        check_state(state)
        if event_id is not None and not is_row_id(event_id):
            raise BadFilter(f"bad event_id {event_id}")
        conds: list[ColumnElement[bool]] = []
        for column, value in (
            (deliveries.c.state, state),
            (deliveries.c.connector, connector),
            (deliveries.c.integration_id, integration),
            (deliveries.c.event_id, event_id),
        ):
            if value not in (None, ""):
                conds.append(column == value)
        if before is not None:
            conds.append(deliveries.c.id < before)
        async with self.store.engine.connect() as conn:
            rows = await self._deliveries(conn, conds, limit=limit + 1, with_history=False)
        items, next_cursor = page_of(rows, limit)
        return s.DeliveryPage(items=items, next_cursor=next_cursor)

    async def delivery(self, delivery_id: int) -> s.Delivery | None:
        if not is_row_id(delivery_id):
            return None
        async with self.store.engine.connect() as conn:
            found = await self._deliveries(conn, [deliveries.c.id == delivery_id])
        return found[0] if found else None

    async def _deliveries(
        self,
        conn: AsyncConnection,
        conds: list[ColumnElement[bool]],
        *,
        limit: int | None = None,
        asc: bool = False,
        with_history: bool = True,
    ) -> list[s.Delivery]:
        order = deliveries.c.id.asc() if asc else deliveries.c.id.desc()
        stmt = (
            select(*_DELIVERY_COLS)
            .select_from(deliveries.join(events, events.c.id == deliveries.c.event_id))
            .where(*conds)
            .order_by(order)
            .limit(limit)
        )
        rows = (await conn.execute(stmt)).all()
        ids = [r.id for r in rows]
        retries = await history.retries_of(conn, ids)
        shown = await history.histories(conn, ids, retries, self.redact) if with_history else {}
        return [
            s.Delivery(
                **(
                    r._asdict()
                    | {
                        "last_error": self.redact(r.last_error),
                        "attempts": r.attempts + history.number_base(retries.get(r.id, [])),
                    }
                ),
                history=shown[r.id][0] if with_history else None,
                manual_retries=shown[r.id][1] if with_history else None,
            )
            for r in rows
        ]

    # -- rejections ---------------------------------------------------------------------------

    async def rejections(
        self, *, integration: str | None = None, cursor: str | None = None, limit: int = 50
    ) -> s.RejectionPage:
        limit, before = check_limit(limit), parse_cursor(cursor)
        conds: list[ColumnElement[bool]] = []
        if integration:
            conds.append(rejections.c.integration_id == integration)
        if before is not None:
            conds.append(rejections.c.id < before)
        stmt = (
            select(*_REJECTION_COLS).where(*conds).order_by(rejections.c.id.desc()).limit(limit + 1)
        )
        async with self.store.engine.connect() as conn:
            rows, next_cursor = page_of(list((await conn.execute(stmt)).all()), limit)
        items = [
            s.Rejection(
                id=r.id,
                received_at=r.received_at,
                transport=r.transport,
                integration_id=clip(r.integration_id, 64),
                reason=clip(r.reason, 255) or "",
                status_code=r.status_code,
                remote=clip(r.remote, 255),
                body_excerpt=self.redact(
                    clip(
                        bytes(r.body_excerpt).decode("utf-8", "replace"),
                        LISTED_EXCERPT,
                        lines=True,
                    )
                    if r.body_excerpt is not None
                    else None
                ),
                body_size=_int_or_none(r.body_size),
            )
            for r in rows
        ]
        return s.RejectionPage(items=items, next_cursor=next_cursor)

    # -- configuration and health -------------------------------------------------------------

    def integrations(self) -> list[s.Integration]:
        return [
            s.Integration(
                id=iid,
                name=integ.name,
                transport=integ.transport,
                retention_seconds=integ.retention or self.settings.retention.events,
                routes=[
                    s.Route(connector=r.connector, events=list(r.events), where=r.where)
                    for r in integ.routes
                ],
            )
            for iid, integ in self.settings.integrations.items()
        ]

    async def connectors(self) -> list[s.ConnectorStatus]:
        now = utcnow()
        counts, oldest = await queue_stats(self.store)
        async with self.store.engine.connect() as conn:
            paused = {
                r.connector: r
                for r in await conn.execute(
                    select(connector_state).where(connector_state.c.paused_until > now)
                )
            }
            out = []
            configured = self.settings.connectors
            # A connector a reload removed keeps its pending deliveries (re-adding it resumes
            # them): listed, marked not configured, until none is left pending or dead.
            gone = sorted(
                {c for (c, st), n in counts.items() if n and c not in configured and st in SHOWN}
            )
            for name in [*configured, *gone]:
                inst = configured.get(name)
                last = (
                    await conn.execute(
                        select(deliveries.c.last_error, deliveries.c.updated_at)
                        .where(
                            deliveries.c.connector == name,
                            deliveries.c.state.in_((DeliveryState.PENDING, DeliveryState.DEAD)),
                            deliveries.c.last_error.is_not(None),
                        )
                        .order_by(deliveries.c.updated_at.desc())
                        .limit(1)
                    )
                ).first()
                pause = paused.get(name)
                out.append(
                    s.ConnectorStatus(
                        name=name,
                        type=inst.type if inst else "",
                        configured=inst is not None,
                        counts={st: counts.get((name, st), 0) for st in s.STATES},
                        oldest_pending_seconds=(
                            (now - oldest[name]).total_seconds() if name in oldest else None
                        ),
                        last_error=self.redact(last.last_error) if last else None,
                        last_error_at=last.updated_at if last else None,
                        paused_until=pause.paused_until if pause else None,
                        pause_reason=self.redact(pause.pause_reason) if pause else None,
                    )
                )
        return out

    async def overview(self) -> s.Overview:
        now = utcnow()
        hour, day = now - timedelta(hours=1), now - timedelta(days=1)
        async with self.store.engine.connect() as conn:
            activity = {
                r.integration_id: r
                for r in await conn.execute(
                    select(
                        events.c.integration_id,
                        func.count().label("day"),
                        func.sum(case((events.c.received_at >= hour, 1), else_=0)).label("hour"),
                    )
                    .where(events.c.received_at >= day)
                    .group_by(events.c.integration_id)
                )
            }
            rejected = await conn.scalar(
                select(func.count()).select_from(rejections).where(rejections.c.received_at >= day)
            )
        ids = list(self.settings.integrations) + sorted(
            set(activity) - set(self.settings.integrations)
        )
        integrations = [
            s.IntegrationActivity(
                id=iid,
                name=(integ.name if (integ := self.settings.integrations.get(iid)) else None),
                last_hour=int(activity[iid].hour or 0) if iid in activity else 0,
                last_day=int(activity[iid].day) if iid in activity else 0,
            )
            for iid in ids
        ]
        return s.Overview(
            generated_at=now,
            integrations=integrations,
            connectors=await self.connectors(),
            rejections_last_day=int(rejected or 0),
        )


# The states that keep a connector no longer configured on the list.
SHOWN = (*ACTIVE, DeliveryState.DEAD)


async def queue_stats(
    store: Store,
) -> tuple[dict[tuple[str, str], int], dict[str, datetime]]:
    """Deliveries per (connector, state), and each connector's oldest unfinished delivery."""
    counts = await store.delivery_counts()
    async with store.engine.connect() as conn:
        rows = await conn.execute(
            select(deliveries.c.connector, func.min(deliveries.c.created_at))
            .where(deliveries.c.state.in_(ACTIVE))
            .group_by(deliveries.c.connector)
        )
        oldest = {r[0]: _aware(r[1]) for r in rows if r[1] is not None}
    return counts, oldest


def _aware(value: Any) -> datetime:
    """Aggregates bypass the column type; SQLite hands back a naive string or datetime."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=utcnow().tzinfo)


async def _states_by_event(conn: AsyncConnection, ids: list[int]) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = defaultdict(dict)
    if ids:
        rows = await conn.execute(
            select(deliveries.c.event_id, deliveries.c.state, func.count())
            .where(deliveries.c.event_id.in_(ids))
            .group_by(deliveries.c.event_id, deliveries.c.state)
        )
        for event_id, state, n in rows:
            out[event_id][state] = int(n)
    return out


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _normalized(raw: bytes) -> dict[str, Any]:
    try:
        view = parse(raw).view()
    except InvalidEvent:
        return {}
    return {k: v for k, v in view.items() if k in ("call", "presence", "sms") and v is not None}
