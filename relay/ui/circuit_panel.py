"""The dashboard's circuit breakers panel (``_circuits.html``): state, history, open/close."""

from __future__ import annotations

from litestar import get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Template

from relay.admin.actions import ActionError
from relay.admin.breakers import close_circuit, open_circuit, statuses
from relay.admin.queries import Queries

Q = NamedDependency[Queries]


async def _panel(queries: Queries, error: str | None = None) -> Template:
    found = await statuses(queries.store, queries.settings)
    return Template("_circuits.html", context={"circuits": found, "circuit_error": error})


@get("/circuits")
async def circuits_panel(queries: Q) -> Template:
    return await _panel(queries)


@post("/circuits/{connector:str}/open", status_code=200)
async def open_by_hand(queries: Q, connector: FromPath[str]) -> Template:
    try:
        await open_circuit(queries.store, queries.settings, connector, "opened from the dashboard")
    except ActionError as exc:
        return await _panel(queries, exc.message)
    return await _panel(queries)


@post("/circuits/{connector:str}/close", status_code=200)
async def close_by_hand(queries: Q, state: State, connector: FromPath[str]) -> Template:
    try:
        await close_circuit(queries.store, queries.settings, connector, "closed from the dashboard")
    except ActionError as exc:
        return await _panel(queries, exc.message)
    if state.dispatcher is not None:
        state.dispatcher.wake()
    return await _panel(queries)


HANDLERS = [circuits_panel, open_by_hand, close_by_hand]
