"""The incident watcher: relay looking at itself, from the store, every ``alerts.interval``.

Each service process runs one loop (relay.runtime). A round reads every condition the store
knows of (open circuits, connectors paused for quota, OAuth refreshes refused, dead letters)
and opens an incident for each one found, resolving the open ones whose condition has
cleared. Opening and resolving are conditional writes (relay.store.incidents), so the rounds
of several processes agree, and each incident's alert goes out once. Conditions that live in
one process's memory (an SQS consumer failing, the store refusing ingest) are reported by that
process (relay.ingest.accept ``Ingest.report``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from sqlalchemy import func, select

from relay.admin.schemas import Incident as IncidentOut
from relay.crm.oauth import AUTH_REFUSED
from relay.ingest.accept import SQS_CONSUMER, STORE_UNAVAILABLE
from relay.live_config import LiveConfig
from relay.store.incidents import INCIDENT_INTEGRATION, Incident
from relay.store.records import Store
from relay.store.states import DeliveryState
from relay.store.tables import circuits, connector_state, deliveries, utcnow

log = logging.getLogger("relay.incidents")

# What the watcher decides from the store; an incident of any other kind is its reporter's.
CIRCUIT, PAUSED, AUTH, DEAD_LETTERS = "circuit_open", "quota_paused", "auth_revoked", "dead_letters"
WATCHED = (CIRCUIT, PAUSED, AUTH, DEAD_LETTERS)
# every kind an incident can have (the /metrics gauge shows each, 0 included)
KINDS = (*WATCHED, STORE_UNAVAILABLE, SQS_CONSUMER)


@dataclass(frozen=True, slots=True)
class Condition:
    kind: str
    subject: str
    summary: str


def incident_out(incident: Incident) -> IncidentOut:
    """What the API, the dashboard and ``relay incidents --json`` show of an incident."""
    return IncidentOut(
        id=incident.id,
        kind=incident.kind,
        subject=incident.subject,
        summary=incident.summary,
        state="open" if incident.open else "resolved",
        opened_at=incident.opened_at,
        updated_at=incident.updated_at,
        resolved_at=incident.resolved_at,
    )


async def conditions(store: Store, dead_letters: int) -> list[Condition]:
    """Every watched condition true now (one read connection)."""
    now = utcnow()
    found: list[Condition] = []
    dead = (
        select(deliveries.c.connector, func.count())
        .where(
            deliveries.c.state == DeliveryState.DEAD,
            # an alert's own dead letters open nothing: no chain of alerts about alerts
            deliveries.c.integration_id != INCIDENT_INTEGRATION,
        )
        .group_by(deliveries.c.connector)
    )
    async with store.engine.connect() as conn:
        for row in await conn.execute(select(circuits).where(circuits.c.state != "closed")):
            why = f": {row.reason}" if row.reason else ""
            found.append(Condition(CIRCUIT, row.connector, f"circuit {row.state}{why}"))
        for row in await conn.execute(select(connector_state)):
            if row.paused_until is not None and row.paused_until > now:
                until = row.paused_until.isoformat(timespec="seconds")
                why = f": {row.pause_reason}" if row.pause_reason else ""
                found.append(Condition(PAUSED, row.connector, f"paused until {until}{why}"))
            refused = (row.state or {}).get(AUTH_REFUSED)
            if isinstance(refused, dict):
                reason = str(refused.get("reason") or "refused")
                found.append(Condition(AUTH, row.connector, f"credentials refused: {reason}"))
        for connector, n in await conn.execute(dead):
            if n >= dead_letters:
                found.append(Condition(DEAD_LETTERS, connector, f"{n} dead deliveries"))
    return found


async def watch_once(store: Store, live: LiveConfig) -> None:
    """One round: open what is wrong, resolve what no longer is."""
    alerts = live.current.alerts
    now = {(c.kind, c.subject): c.summary for c in await conditions(store, alerts.dead_letters)}
    opened = {(i.kind, i.subject) for i in await store.incidents(open_only=True, limit=1000)}
    for kind, subject in list(now):
        # refused credentials hold their connector's circuit open: one cause, one alert (a
        # circuit incident already open for an earlier outage stays open until it closes)
        if kind == AUTH and (CIRCUIT, subject) in now and (CIRCUIT, subject) not in opened:
            del now[CIRCUIT, subject]
    gone = [key for key in opened if key[0] in WATCHED and key not in now]
    for (kind, subject), summary in [*now.items(), *((key, None) for key in gone)]:
        if await store.report_incident(kind, subject, summary, alert_to=alerts.connectors):
            change = "opened" if summary else "resolved"
            log.warning("incident %s", change, extra={"kind": kind, "subject": subject})


async def watch_forever(store: Store, live: LiveConfig, stop: asyncio.Event) -> None:
    """Watch now, then every ``alerts.interval``, until ``stop`` is set."""
    while not stop.is_set():
        try:
            await watch_once(store, live)
        except Exception as exc:  # the database is away; the next round will catch up
            log.error("incident watch failed: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), live.current.alerts.interval)
