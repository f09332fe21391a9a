"""Dashboard pages and the htmx fragments they refresh; all reads go through ``Queries``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Redirect, Template

from relay.admin import actions, charts
from relay.admin import schemas as s
from relay.admin.auth import FailureThrottle, client_address
from relay.admin.filters import BadFilter, EventFilter
from relay.admin.queries import Queries
from relay.secrets import token_matches
from relay.store.states import DeliveryState
from relay.ui.sessions import Sessions

log = logging.getLogger("relay.ui")
PUBLIC = {"public": True}
Q = NamedDependency[Queries]
# The states the filters offer; the deliveries page opens on the dead letters, or shows all.
EVENT_STATES: list[str] = list(DeliveryState)
DELIVERY_STATES: list[str] = [
    DeliveryState.DEAD,
    *(st for st in DeliveryState if st is not DeliveryState.DEAD),
    "all",
]


def _time(value: str | None) -> datetime | None:
    """``<input type=datetime-local>`` sends ``2026-11-30T10:00``; the dashboard speaks UTC."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadFilter(f"not a date and time: {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _text(params: Mapping[str, Any], name: str) -> str | None:
    value = (params.get(name) or "").strip()
    return value or None


def _criteria(params: Mapping[str, Any]) -> dict[str, Any]:
    """The filter fields the events page and the replay form share."""
    return {
        "integration": _text(params, "integration"),
        "type": _text(params, "type"),
        "call_id": _text(params, "call_id"),
        "since": _time(_text(params, "since")),
        "until": _time(_text(params, "until")),
    }


@get("/login", opt=PUBLIC)
async def login_page() -> Template:
    return Template("login.html", context={"error": None})


@post("/login", opt=PUBLIC, status_code=200)
async def login(
    request: Request[Any, Any, Any],
    state: State,
    sessions: NamedDependency[Sessions],
    throttle: NamedDependency[FailureThrottle],
) -> Response[Any]:
    """While too many wrong tokens were tried, even the right one waits (else guessing goes on)."""
    client = client_address(request)
    wait = throttle.retry_after(client)
    if wait:
        error = f"Too many wrong tokens. Try again in {wait} seconds."
        headers = {"Retry-After": str(wait)}
        return Template("login.html", context={"error": error}, status_code=429, headers=headers)
    form = await request.form()
    if token_matches(str(form.get("token", "")), state.queries.settings.admin.token):
        request.set_session({"sid": sessions.open()})
        return Redirect("/ui/")
    throttle.failed(client)
    log.warning("dashboard login refused", extra={"remote": client})
    return Template(
        "login.html", context={"error": "That is not the admin token."}, status_code=401
    )


@post("/logout", status_code=200)
async def logout(request: Request[Any, Any, Any], sessions: NamedDependency[Sessions]) -> Redirect:
    sessions.close(request.session.get("sid"))
    request.clear_session()
    return Redirect("/ui/login")


async def _overview(queries: Queries, range_key: str | None) -> dict[str, Any]:
    """The overview's tables and its charts over ``range`` (1h, 24h, 7d)."""
    ch = await charts.charts(queries.store, queries.settings, range_key)
    return {
        "o": await queries.overview(),
        "ch": ch,
        "ranges": [(key, r.label) for key, r in charts.RANGES.items()],
        "charts_by_integration": {i.id: i for i in ch.integrations},
        "charts_by_connector": {k.name: k for k in ch.connectors},
    }


@get("/")
async def overview(request: Request[Any, Any, Any], queries: Q) -> Template:
    context = await _overview(queries, _text(request.query_params, "range"))
    return Template("overview.html", context=context)


@get("/overview/panel")
async def overview_panel(request: Request[Any, Any, Any], queries: Q) -> Template:
    context = await _overview(queries, _text(request.query_params, "range"))
    return Template("_overview_panel.html", context=context)


@get("/events")
async def events(request: Request[Any, Any, Any], queries: Q) -> Template:
    q = request.query_params
    context: dict[str, Any] = {
        "q": q,
        "page": None,
        "error": None,
        "state_choices": EVENT_STATES,
    }
    try:
        f = EventFilter(**_criteria(q), phone=_text(q, "phone"), status=_text(q, "status"))
        context["page"] = await queries.events(f, cursor=_text(q, "cursor"))
    except BadFilter as exc:
        context["error"] = str(exc)
    context["more"] = {k: v for k, v in q.items() if k != "cursor" and v}
    return Template("events.html", context=context)


@get("/events/{event_id:int}")
async def event(queries: Q, event_id: FromPath[int]) -> Template:
    found = await queries.event(event_id)
    if found is None:
        return Template("error.html", context={"message": f"No event {event_id}."}, status_code=404)
    return Template("event.html", context={"e": found})


@get("/deliveries")
async def deliveries(request: Request[Any, Any, Any], queries: Q) -> Template:
    q = request.query_params
    state = _text(q, "state") or DeliveryState.DEAD
    connector = _text(q, "connector")
    page = await queries.deliveries(
        state=None if state == "all" else state, connector=connector, cursor=_text(q, "cursor")
    )
    context = {
        "state": state,
        "connector": connector,
        "page": page,
        "connectors": list(queries.settings.connectors),
        "state_choices": DELIVERY_STATES,
    }
    return Template("deliveries.html", context=context)


# Where a delivery is shown: a row of the deliveries table, or a timeline on its event's page.
VIEWS = {"row": "_delivery_row.html", "timeline": "_delivery_timeline.html"}


async def _row(
    queries: Queries, delivery_id: int, error: str | None = None, view: str | None = None
) -> Template:
    found = await queries.delivery(delivery_id)
    if found is None:
        return Template("error.html", context={"message": "No such delivery."}, status_code=404)
    template = VIEWS.get(view or "row", VIEWS["row"])
    return Template(template, context={"d": found, "error": error})


@get("/deliveries/{delivery_id:int}/row")
async def delivery_row(queries: Q, delivery_id: FromPath[int]) -> Template:
    return await _row(queries, delivery_id)


@get("/deliveries/{delivery_id:int}/timeline")
async def delivery_timeline(queries: Q, delivery_id: FromPath[int]) -> Template:
    return await _row(queries, delivery_id, view="timeline")


@post("/deliveries/{delivery_id:int}/retry", status_code=200)
async def retry(
    request: Request[Any, Any, Any], queries: Q, state: State, delivery_id: FromPath[int]
) -> Template:
    view = _text(request.query_params, "view")
    try:
        await actions.retry(queries.store, delivery_id, by="dashboard")
    except actions.ActionError as exc:
        return await _row(queries, delivery_id, exc.message, view)
    if state.dispatcher is not None:
        state.dispatcher.wake()
    return await _row(queries, delivery_id, view=view)


@post("/deliveries/{delivery_id:int}/cancel", status_code=200)
async def cancel(
    request: Request[Any, Any, Any], queries: Q, delivery_id: FromPath[int]
) -> Template:
    view = _text(request.query_params, "view")
    try:
        await actions.cancel(queries.store, delivery_id)
    except actions.ActionError as exc:
        return await _row(queries, delivery_id, exc.message, view)
    return await _row(queries, delivery_id, view=view)


@get("/replay")
async def replay_form(request: Request[Any, Any, Any], queries: Q) -> Template:
    return Template(
        "replay.html",
        context={
            "q": request.query_params,
            "connectors": list(queries.settings.connectors),
            "integrations": list(queries.settings.integrations),
        },
    )


@post("/replay", status_code=200)
async def replay(request: Request[Any, Any, Any], queries: Q, state: State) -> Template:
    form = await request.form()
    try:
        event_id = _text(form, "event_id")
        req = s.ReplayRequest(
            **_criteria(form),
            event_id=int(event_id) if event_id else None,
            connector=_text(form, "connector"),
            dry_run=form.get("action") != "replay",
        )
        result = await actions.replay(queries.store, queries.settings, req)
    except (BadFilter, actions.ActionError, ValueError, msgspec.ValidationError) as exc:
        message = exc.message if isinstance(exc, actions.ActionError) else str(exc)
        return Template("_replay_result.html", context={"error": message, "r": None})
    if result.deliveries and not result.dry_run and state.dispatcher is not None:
        state.dispatcher.wake()
    return Template("_replay_result.html", context={"error": None, "r": result})


@get("/rejections")
async def rejections(request: Request[Any, Any, Any], queries: Q) -> Template:
    q = request.query_params
    page = await queries.rejections(integration=_text(q, "integration"), cursor=_text(q, "cursor"))
    return Template("rejections.html", context={"page": page, "q": q})


HANDLERS = [
    login_page,
    login,
    logout,
    overview,
    overview_panel,
    events,
    event,
    deliveries,
    delivery_row,
    delivery_timeline,
    retry,
    cancel,
    replay_form,
    replay,
    rejections,
]
