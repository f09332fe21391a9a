"""The admin API under ``/api/v1`` and ``GET /metrics``: thin controllers over queries/actions.

Mounted only when ``admin.token`` is set (otherwise these paths do not exist at all: 404).
Every route asks for ``Authorization: Bearer <admin.token>``; OpenAPI shows it as ``AdminToken``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from litestar import Controller, Request, Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotAuthorizedException, NotFoundException
from litestar.handlers import BaseRouteHandler
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.types import Guard
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from relay import metrics
from relay.admin import actions
from relay.admin import schemas as s
from relay.admin.breakers import CircuitsController
from relay.admin.filters import BadFilter, EventFilter
from relay.admin.queries import Queries, queue_stats
from relay.admin.watcher import KINDS, incident_out
from relay.config import Settings
from relay.live_config import ReloadResult
from relay.secrets import token_matches
from relay.store.records import Store
from relay.store.states import ACTIVE, DeliveryState
from relay.store.tables import utcnow

SECURITY_SCHEME = "AdminToken"
Limit = Annotated[int, QueryParameter(ge=1, le=500, description="page size")]
Cursor = Annotated[str | None, QueryParameter(description="the previous page's `next_cursor`")]
Q = NamedDependency[Queries]
Text = FromQuery[str | None]
When = FromQuery[datetime | None]


def openapi_components() -> Components:
    return Components(
        security_schemes={
            SECURITY_SCHEME: SecurityScheme(
                type="http",
                scheme="bearer",
                description="The `admin.token` from the configuration.",
            )
        }
    )


def bearer_guard(token: str) -> Guard:
    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        scheme, _sep, value = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token_matches(value.strip(), token):
            raise NotAuthorizedException(
                "missing or wrong admin token", headers={"WWW-Authenticate": "Bearer"}
            )

    return guard


def provide_queries(state: State) -> Queries:
    return state.queries


def _bad_request(_: Request[Any, Any, Any], exc: Exception) -> Response[s.Problem]:
    return Response(s.Problem(detail=str(exc)), status_code=400)


def _action_error(_: Request[Any, Any, Any], exc: Exception) -> Response[s.Problem]:
    assert isinstance(exc, actions.ActionError)
    return Response(s.Problem(detail=exc.message), status_code=exc.status)


def _wake(state: State) -> None:
    """New or re-armed work: an in-process dispatcher looks at once (a worker on its next poll)."""
    dispatcher = getattr(state, "dispatcher", None)
    if dispatcher is not None:
        dispatcher.wake()


async def _delivery(queries: Queries, delivery_id: FromPath[int]) -> s.Delivery:
    found = await queries.delivery(delivery_id)
    if found is None:
        raise NotFoundException(f"no delivery {delivery_id}")
    return found


class EventsController(Controller):
    path = "/events"
    tags = ["events"]

    @get("/")
    async def list_events(
        self,
        queries: Q,
        integration: Text = None,
        type: Annotated[str | None, QueryParameter(description="glob, e.g. call:*")] = None,
        call_id: Text = None,
        phone: Annotated[
            str | None, QueryParameter(description="a phone number in any form (+44…, 0044…)")
        ] = None,
        since: Annotated[
            datetime | None, QueryParameter(description="received at or after")
        ] = None,
        until: Annotated[datetime | None, QueryParameter(description="received before")] = None,
        status: Annotated[
            s.DeliveryState | None, QueryParameter(description="has a delivery in this state")
        ] = None,
        cursor: Cursor = None,
        limit: Limit = 50,
    ) -> s.EventPage:
        """Stored events, newest first."""
        f = EventFilter(
            integration=integration,
            type=type,
            call_id=call_id,
            phone=phone,
            since=since,
            until=until,
            status=status,
        )
        return await queries.events(f, cursor=cursor, limit=limit)

    @get("/{event_id:int}")
    async def get_event(self, queries: Q, event_id: FromPath[int]) -> s.EventDetail:
        """One event: raw body, normalized view, deliveries with their attempts."""
        found = await queries.event(event_id)
        if found is None:
            raise NotFoundException(f"no event {event_id}")
        return found


class DeliveriesController(Controller):
    path = "/deliveries"
    tags = ["deliveries"]

    @get("/")
    async def list_deliveries(
        self,
        queries: Q,
        delivery_state: Annotated[
            s.DeliveryState | None, QueryParameter(name="state", description="e.g. dead")
        ] = None,
        connector: Text = None,
        integration: Text = None,
        event_id: FromQuery[int | None] = None,
        cursor: Cursor = None,
        limit: Limit = 50,
    ) -> s.DeliveryPage:
        """Deliveries, newest first; ``state=dead`` is the dead-letter list."""
        return await queries.deliveries(
            state=delivery_state,
            connector=connector,
            integration=integration,
            event_id=event_id,
            cursor=cursor,
            limit=limit,
        )

    @get("/{delivery_id:int}")
    async def get_delivery(self, queries: Q, delivery_id: FromPath[int]) -> s.Delivery:
        """One delivery with its attempts."""
        return await _delivery(queries, delivery_id)

    @post("/{delivery_id:int}/retry", status_code=200)
    async def retry(self, queries: Q, state: State, delivery_id: FromPath[int]) -> s.Delivery:
        """Attempt now. A dead or cancelled delivery gets its full retry schedule again."""
        await actions.retry(queries.store, delivery_id, by="admin API")
        _wake(state)
        return await _delivery(queries, delivery_id)

    @post("/{delivery_id:int}/cancel", status_code=200)
    async def cancel(self, queries: Q, delivery_id: FromPath[int]) -> s.Delivery:
        """Stop a pending delivery or acknowledge a dead one; later ones of its call proceed."""
        await actions.cancel(queries.store, delivery_id)
        return await _delivery(queries, delivery_id)


@post("/replay", status_code=200, tags=["replay"])
async def replay(queries: Q, state: State, data: JSONBody[s.ReplayRequest]) -> s.ReplayResult:
    """New deliveries for stored events: one (``event_id``) or by filter; ``dry_run`` counts."""
    result = await actions.replay(queries.store, queries.settings, data)
    if result.deliveries and not result.dry_run:
        _wake(state)
    return result


@get("/rejections", tags=["rejections"])
async def list_rejections(
    queries: Q, integration: Text = None, cursor: Cursor = None, limit: Limit = 50
) -> s.RejectionPage:
    """Inbound requests refused (bad signature, unknown integration, not a Wildix envelope…)."""
    return await queries.rejections(integration=integration, cursor=cursor, limit=limit)


@get("/integrations", tags=["configuration"], sync_to_thread=False)
def list_integrations(queries: Q) -> list[s.Integration]:
    """Configured integrations and their routes (secrets are never included)."""
    return queries.integrations()


@get("/connectors", tags=["configuration"])
async def list_connectors(queries: Q) -> list[s.ConnectorStatus]:
    """Per connector: deliveries by state, oldest pending age, last error, paused until."""
    return await queries.connectors()


@get("/overview", tags=["configuration"])
async def overview(queries: Q) -> s.Overview:
    """What the dashboard's front page shows: recent events per integration, connector health."""
    return await queries.overview()


@get("/incidents", tags=["incidents"])
async def list_incidents(
    queries: Q,
    status: Annotated[
        str, QueryParameter(pattern="^(open|all)$", description="`open` or `all`")
    ] = "all",
    limit: Limit = 100,
) -> list[s.Incident]:
    """relay's own incidents, newest first: open ones, or all (resolved ones included)."""
    found = await queries.store.incidents(open_only=status == "open", limit=limit)
    return [incident_out(i) for i in found]


@get("/config", tags=["configuration"], sync_to_thread=False)
def get_config(queries: Q) -> s.ConfigVersion:
    """The config in force: its version (a hash of the file), when it was loaded, its path."""
    live = queries.live
    return s.ConfigVersion(version=live.version, loaded_at=live.loaded_at, path=live.path)


@post("/config/reload", tags=["configuration"])
async def reload_config(state: State) -> Response[ReloadResult]:
    """Re-read the config file and apply it (as SIGHUP does); 422 with the key path if refused,
    and the old config stays in force."""
    result: ReloadResult = await state.reloader.reload()
    return Response(result, status_code=422 if result.result == "refused" else 200)


async def metrics_endpoint(state: State) -> Response[bytes]:
    """Prometheus exposition; queue gauges are read from the database now."""
    store: Store = state.store
    settings: Settings = state.queries.settings
    counts, oldest = await queue_stats(store)
    active: dict[str, int] = {}
    dead: dict[str, int] = {}
    for (connector, state), n in counts.items():
        if state in ACTIVE:
            active[connector] = active.get(connector, 0) + n
        elif state == DeliveryState.DEAD:
            dead[connector] = n
    circuits = {name: c.state.value for name, c in (await store.circuits()).items()}
    metrics.INCIDENTS.snapshot = dict.fromkeys(KINDS, 0) | await store.open_incident_counts()
    metrics.QUEUE.snapshot = metrics.QueueSnapshot(
        at=utcnow(),
        connectors=list(settings.connectors),
        active=active,
        dead=dead,
        oldest=oldest,
        circuits=circuits,
    )
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def routers(settings: Settings) -> list[Any]:
    token = settings.admin.token
    api = Router(
        path="/api/v1",
        route_handlers=[
            EventsController,
            DeliveriesController,
            CircuitsController,
            replay,
            list_rejections,
            list_integrations,
            list_connectors,
            overview,
            list_incidents,
            get_config,
            reload_config,
        ],
        guards=[bearer_guard(token)],
        security=[{SECURITY_SCHEME: []}],
        dependencies={"queries": Provide(provide_queries, sync_to_thread=False)},
        exception_handlers={BadFilter: _bad_request, actions.ActionError: _action_error},
    )
    scrape = get(
        "/metrics",
        guards=[] if settings.admin.public_metrics else [bearer_guard(token)],
        include_in_schema=False,
    )(metrics_endpoint)
    return [api, scrape]
