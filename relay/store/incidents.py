"""Incidents: what relay finds wrong with itself, kept so that every process of a cluster agrees.

An incident opens once and resolves once. Both are one conditional write, so any number of
processes may report the same condition at the same time: the partial unique index on open
(kind, subject) lets one INSERT through, and ``resolved_at IS NULL`` lets one UPDATE through.
The write that wins also stores the alert, in the same transaction: an event of the
relay-internal type ``relay:incident`` with one pending delivery per alert connector, so alerts
get the queue's retries, dead letters and replay like any other delivery.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from relay.store.rows import (
    DELIVERY_COLUMNS,
    EVENT_COLUMNS,
    Incoming,
    delivery_rows,
    event_row,
)
from relay.store.tables import deliveries, events, incidents, utcnow
from relay.wildix import parse

if TYPE_CHECKING:
    from relay.store.backend import Backend

__all__ = ["INCIDENT_EVENT", "INCIDENT_INTEGRATION", "Incident", "Incidents", "alert_body"]

INCIDENT_EVENT = "relay:incident"  # the event type of an incident's alert
INCIDENT_INTEGRATION = "relay"  # its integration id: what tells relay's own deliveries apart
MAX_SUMMARY = 1000


@dataclass(frozen=True, slots=True)
class Incident:
    id: int
    kind: str
    subject: str
    summary: str
    opened_at: datetime
    updated_at: datetime
    resolved_at: datetime | None

    @property
    def open(self) -> bool:
        return self.resolved_at is None

    def view(self) -> dict[str, Any]:
        """JSON-ready, as the API, the CLI and the alert show it."""
        return {
            "id": self.id,
            "kind": self.kind,
            "subject": self.subject,
            "summary": self.summary,
            "state": "open" if self.open else "resolved",
            "opened_at": self.opened_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "resolved_at": self.resolved_at.isoformat() if self.resolved_at else None,
        }


def _incident(row: Any) -> Incident:
    return Incident(
        row.id, row.kind, row.subject, row.summary, row.opened_at, row.updated_at, row.resolved_at
    )


def alert_body(incident: Incident, change: str) -> bytes:
    """An incident's alert as a Wildix-shaped envelope: it goes through the queue, the
    connectors and the webhook connector's ``raw`` mode like any event. ``data.change`` is
    ``opened`` or ``resolved``; the rest of ``data`` is ``Incident.view()``."""
    at = incident.resolved_at if change == "resolved" else incident.opened_at
    assert at is not None
    body = {
        "id": f"incident-{incident.id}-{change}",
        "type": INCIDENT_EVENT,
        "time": int(at.timestamp() * 1000),
        "integrationId": INCIDENT_INTEGRATION,
        "data": {"change": change, **incident.view()},
    }
    return json.dumps(body).encode()


def _alert(conn: Connection, incident: Incident, change: str, to: Sequence[str]) -> None:
    """The alert of an incident's ``change`` (opened, resolved), stored as an event routed to
    ``to``, in the caller's transaction."""
    if not to:
        return
    item = Incoming(parse(alert_body(incident, change)), list(to), "internal")
    now = utcnow()
    values = dict(zip(EVENT_COLUMNS, event_row(item), strict=True)) | {"received_at": now}
    event_id = conn.execute(insert(events).returning(events.c.id), values).scalar_one()
    rows = delivery_rows(event_id, item.event, item.connectors, now)
    conn.execute(insert(deliveries), [dict(zip(DELIVERY_COLUMNS, r, strict=True)) for r in rows])


class Incidents:
    """The incident side of the store; ``Store`` provides ``backend`` and ``engine``."""

    backend: Backend
    engine: AsyncEngine

    async def open_incident(
        self, kind: str, subject: str, summary: str, *, alert_to: Sequence[str] = ()
    ) -> Incident | None:
        """Open the incident unless one is open already (then its summary is brought up to
        date); the new incident, or None when it was open."""
        summary = summary[:MAX_SUMMARY]
        subject = subject[:255]

        def work(conn: Connection) -> Incident | None:
            now = utcnow()
            row = conn.execute(
                self.backend.insert(incidents)
                .values(kind=kind, subject=subject, summary=summary, opened_at=now, updated_at=now)
                .on_conflict_do_nothing(
                    index_elements=["kind", "subject"],
                    index_where=incidents.c.resolved_at.is_(None),
                )
                .returning(*incidents.c)
            ).first()
            if row is None:
                conn.execute(
                    update(incidents)
                    .where(
                        incidents.c.kind == kind,
                        incidents.c.subject == subject,
                        incidents.c.resolved_at.is_(None),
                        incidents.c.summary != summary,
                    )
                    .values(summary=summary, updated_at=now)
                )
                return None
            incident = _incident(row)
            _alert(conn, incident, "opened", alert_to)
            return incident

        return await self.backend.write(work)

    async def resolve_incident(
        self, kind: str, subject: str, *, alert_to: Sequence[str] = ()
    ) -> Incident | None:
        """Resolve the open incident; the resolved incident, or None when none was open."""

        def work(conn: Connection) -> Incident | None:
            row = conn.execute(
                update(incidents)
                .where(
                    incidents.c.kind == kind,
                    incidents.c.subject == subject[:255],
                    incidents.c.resolved_at.is_(None),
                )
                .values(resolved_at=utcnow(), updated_at=utcnow())
                .returning(*incidents.c)
            ).first()
            if row is None:
                return None
            incident = _incident(row)
            _alert(conn, incident, "resolved", alert_to)
            return incident

        return await self.backend.write(work)

    async def report_incident(
        self, kind: str, subject: str, summary: str | None, *, alert_to: Sequence[str] = ()
    ) -> Incident | None:
        """``summary`` opens (or updates) the incident, None resolves it; the incident when
        this call opened or resolved it, else None."""
        if summary is None:
            return await self.resolve_incident(kind, subject, alert_to=alert_to)
        return await self.open_incident(kind, subject, summary, alert_to=alert_to)

    async def incidents(self, *, open_only: bool = False, limit: int = 100) -> list[Incident]:
        """Newest first."""
        stmt = select(incidents).order_by(incidents.c.id.desc()).limit(limit)
        if open_only:
            stmt = stmt.where(incidents.c.resolved_at.is_(None))
        async with self.engine.connect() as conn:
            return [_incident(r) for r in await conn.execute(stmt)]

    async def open_incident_counts(self) -> dict[str, int]:
        """Open incidents by kind (the ``/metrics`` gauge)."""
        stmt = (
            select(incidents.c.kind, func.count())
            .where(incidents.c.resolved_at.is_(None))
            .group_by(incidents.c.kind)
        )
        async with self.engine.connect() as conn:
            return {kind: int(n) for kind, n in await conn.execute(stmt)}
