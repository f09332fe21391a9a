"""The circuit breakers as an operator sees and moves them: API, dashboard and CLI alike.

Reads come from the database (every process's view is the stored one); opening or closing by
hand is the same guarded change the dispatchers make (relay.dispatch.circuit_breaker), so a
running cluster follows it within one poll interval.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from relay.admin.actions import ActionError
from relay.admin.queries import Queries
from relay.config import Settings
from relay.dispatch.circuit_breaker import apply, closed_by_hand, opened_by_hand
from relay.store.circuits import Circuit, Transition
from relay.store.records import Store

REASON_MAX = 500  # characters of an operator's reason that are kept
HISTORY = 20  # transitions shown per connector


class CircuitTransition(msgspec.Struct, kw_only=True):
    at: datetime
    from_state: str
    to_state: str
    reason: str | None
    worker: str | None


class CircuitStatus(msgspec.Struct, kw_only=True):
    connector: str
    state: str  # closed | open | half_open
    failures: int  # consecutive failures that blamed the target
    cool_down_seconds: float
    opened_at: datetime | None
    next_probe_at: datetime | None
    manual: bool  # opened by hand: no probes until closed by hand
    reason: str | None
    threshold: int  # circuit.failures (0: the breaker is off)
    history: list[CircuitTransition]


class CircuitRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=REASON_MAX)] | None = None


def _status(settings: Settings, c: Circuit, history: list[Transition]) -> CircuitStatus:
    return CircuitStatus(
        connector=c.connector,
        state=c.state.value,
        failures=c.failures,
        cool_down_seconds=c.cool_down,
        opened_at=c.opened_at,
        next_probe_at=None if c.manual or not c.holds else c.probe_at,
        manual=c.manual,
        reason=c.reason,
        threshold=settings.connectors[c.connector].circuit.failures,
        history=[
            CircuitTransition(
                at=t.at,
                from_state=t.from_state,
                to_state=t.to_state,
                reason=t.reason,
                worker=t.worker,
            )
            for t in history
        ],
    )


async def statuses(store: Store, settings: Settings) -> list[CircuitStatus]:
    """Every configured connector's circuit, with its latest transitions."""
    stored = await store.circuits()
    out = []
    for name in settings.connectors:
        history = await store.circuit_history(name, HISTORY)
        out.append(_status(settings, stored.get(name) or Circuit(name), history))
    return out


def _known(settings: Settings, connector: str) -> None:
    if connector not in settings.connectors:
        raise ActionError(404, f"no connector {connector!r} in the configuration")


def _reason(text: str | None, default: str) -> str:
    text = " ".join((text or "").split())[:REASON_MAX]
    return text or default


async def open_circuit(
    store: Store, settings: Settings, connector: str, reason: str | None = None
) -> CircuitStatus:
    """Hold every delivery of ``connector`` (a maintenance window) until closed by hand."""
    _known(settings, connector)
    why = _reason(reason, "opened by hand")
    circuit = await apply(store, connector, opened_by_hand(why), worker="admin")
    return _status(settings, circuit, await store.circuit_history(connector, HISTORY))


async def close_circuit(
    store: Store, settings: Settings, connector: str, reason: str | None = None
) -> CircuitStatus:
    """Let ``connector``'s deliveries go again, whoever opened its circuit."""
    _known(settings, connector)
    why = _reason(reason, "closed by hand")
    circuit = await apply(store, connector, closed_by_hand(why), worker="admin")
    return _status(settings, circuit, await store.circuit_history(connector, HISTORY))


def _wake(state: State) -> None:
    dispatcher = getattr(state, "dispatcher", None)
    if dispatcher is not None:
        dispatcher.wake()


class CircuitsController(Controller):
    path = "/circuits"
    tags = ["circuits"]

    @get("/")
    async def list_circuits(self, queries: NamedDependency[Queries]) -> list[CircuitStatus]:
        """Each connector's circuit breaker: state, consecutive failures, next probe, history."""
        return await statuses(queries.store, queries.settings)

    @post("/{connector:str}/open", status_code=200)
    async def open(
        self,
        queries: NamedDependency[Queries],
        connector: FromPath[str],
        data: JSONBody[CircuitRequest | None] = None,
    ) -> CircuitStatus:
        """Hold the connector's deliveries (no probes) until the circuit is closed by hand."""
        return await open_circuit(
            queries.store, queries.settings, connector, data.reason if data else None
        )

    @post("/{connector:str}/close", status_code=200)
    async def close(
        self,
        queries: NamedDependency[Queries],
        state: State,
        connector: FromPath[str],
        data: JSONBody[CircuitRequest | None] = None,
    ) -> CircuitStatus:
        """Let the connector's deliveries go again now."""
        status = await close_circuit(
            queries.store, queries.settings, connector, data.reason if data else None
        )
        _wake(state)
        return status
