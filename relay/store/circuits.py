"""Circuit breakers in the database: one row per connector that every process reads, and its
history of transitions.

The database is the cluster's coordinator: what a breaker's state becomes is decided by the
dispatcher's policy (relay.dispatch.circuit_breaker), applied here under the row's lock, so
processes that report at once take turns. The half-open probe slot is claimed by one
conditional UPDATE: whichever process's statement matches first sends the probe; every other
one matches nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from relay.store.tables import circuit_transitions, circuits, utcnow

if TYPE_CHECKING:
    from relay.store.backend import Backend

__all__ = ["Change", "Circuit", "CircuitState", "Circuits", "Transition"]

HISTORY_KEPT = 100  # transitions kept per connector; each write trims the older ones
PROBE = "probe"  # the reason of a history row that records a probe sent


class CircuitState(StrEnum):
    CLOSED = "closed"  # deliveries go
    OPEN = "open"  # deliveries wait; a probe may go once ``probe_at`` has passed
    HALF_OPEN = "half_open"  # one probe delivery is out (``probe_by``, until ``probe_until``)


@dataclass(frozen=True, slots=True)
class Circuit:
    """A connector's breaker; a connector without a row is closed."""

    connector: str
    state: CircuitState = CircuitState.CLOSED
    failures: int = 0
    cool_down: float = 0.0
    opened_at: datetime | None = None
    probe_at: datetime | None = None
    probe_by: str | None = None
    probe_until: datetime | None = None
    manual: bool = False
    reason: str | None = None
    updated_at: datetime | None = None

    @property
    def holds(self) -> bool:
        """Its connector's deliveries wait (all but the probe)."""
        return self.state is not CircuitState.CLOSED

    def probe_due(self, now: datetime) -> bool:
        """A probe may be claimed: the cool-down is over and no probe's lease is running."""
        if self.manual or not self.holds or self.probe_at is None or self.probe_at > now:
            return False
        return self.probe_until is None or self.probe_until < now


@dataclass(frozen=True, slots=True)
class Transition:
    connector: str
    at: datetime
    from_state: str
    to_state: str
    reason: str | None
    worker: str | None


# The policy's step: the circuit as stored, and now → what it becomes (None: leave it).
Change = Callable[[Circuit, datetime], Circuit | None]
_COLUMNS = [f.name for f in fields(Circuit)]


def _circuit(row: Any) -> Circuit:
    values = {name: getattr(row, name) for name in _COLUMNS}
    return Circuit(**values | {"state": CircuitState(values["state"])})


def _record(conn: Connection, old: Circuit, new: Circuit, at: datetime, worker: str | None) -> None:
    """One history row, and the connector's history cut to ``HISTORY_KEPT`` rows."""
    conn.execute(
        insert(circuit_transitions).values(
            connector=new.connector,
            at=at,
            from_state=old.state,
            to_state=new.state,
            reason=new.reason,
            worker=worker,
        )
    )
    oldest_kept = conn.scalar(
        select(circuit_transitions.c.id)
        .where(circuit_transitions.c.connector == new.connector)
        .order_by(circuit_transitions.c.id.desc())
        .offset(HISTORY_KEPT - 1)
        .limit(1)
    )
    if oldest_kept is not None:
        conn.execute(
            delete(circuit_transitions).where(
                circuit_transitions.c.connector == new.connector,
                circuit_transitions.c.id < oldest_kept,
            )
        )


class Circuits:
    """The circuit side of the store; ``Store`` provides ``backend`` and ``engine``."""

    backend: Backend
    engine: AsyncEngine

    async def circuits(self) -> dict[str, Circuit]:
        """Every stored breaker (connectors without a row are closed)."""
        async with self.engine.connect() as conn:
            return {r.connector: _circuit(r) for r in await conn.execute(select(circuits))}

    async def circuit_history(self, connector: str | None, limit: int = 20) -> list[Transition]:
        """The latest transitions, newest first; of one connector, or of all."""
        stmt = select(circuit_transitions).order_by(circuit_transitions.c.id.desc()).limit(limit)
        if connector is not None:
            stmt = stmt.where(circuit_transitions.c.connector == connector)
        async with self.engine.connect() as conn:
            return [
                Transition(r.connector, r.at, r.from_state, r.to_state, r.reason, r.worker)
                for r in await conn.execute(stmt)
            ]

    async def change_circuit(
        self, connector: str, change: Change, *, worker: str | None
    ) -> tuple[Circuit, Circuit]:
        """Apply ``change`` to the stored breaker under its row lock: (before, after), the
        same circuit twice when nothing changed. A change of state goes to the history too."""

        def work(conn: Connection) -> tuple[Circuit, Circuit]:
            now = utcnow()
            conn.execute(
                self.backend.insert(circuits)
                .values(
                    connector=connector,
                    state=CircuitState.CLOSED,
                    failures=0,
                    cool_down=0.0,
                    manual=False,
                    updated_at=now,
                )
                .on_conflict_do_nothing(index_elements=["connector"])
            )
            row = conn.execute(
                select(circuits).where(circuits.c.connector == connector).with_for_update()
            ).one()
            old = _circuit(row)
            new = change(old, now)
            if new is None or new == old:
                return old, old
            new = replace(new, updated_at=now)
            values = {name: getattr(new, name) for name in _COLUMNS if name != "connector"}
            conn.execute(update(circuits).where(circuits.c.connector == connector).values(values))
            if new.state != old.state:
                _record(conn, old, new, now, worker)
            return old, new

        return await self.backend.write(work)

    async def claim_probe(self, connector: str, *, worker: str, lease: float) -> bool:
        """Take the half-open probe slot for ``lease`` seconds; True for exactly one claimant.

        The slot is free once the cool-down is over and no other probe's lease is running (a
        process that died mid-probe gives it up when its lease expires).
        """

        def work(conn: Connection) -> bool:
            now = utcnow()
            before = conn.scalar(select(circuits.c.state).where(circuits.c.connector == connector))
            claimed = conn.execute(
                update(circuits)
                .where(
                    circuits.c.connector == connector,
                    circuits.c.state.in_((CircuitState.OPEN, CircuitState.HALF_OPEN)),
                    circuits.c.manual.is_(False),
                    circuits.c.probe_at <= now,
                    or_(circuits.c.probe_until.is_(None), circuits.c.probe_until < now),
                )
                .values(
                    state=CircuitState.HALF_OPEN,
                    probe_by=worker,
                    probe_until=now + timedelta(seconds=lease),
                    updated_at=now,
                )
            ).rowcount
            if claimed != 1:
                return False
            old = Circuit(connector, CircuitState(before or CircuitState.OPEN))
            _record(
                conn, old, replace(old, state=CircuitState.HALF_OPEN, reason=PROBE), now, worker
            )
            return True

        return await self.backend.write(work)
