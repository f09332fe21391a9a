"""Litestar app factory: the HTTP routes, over the parts :func:`relay.runtime.running` builds."""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

from litestar import Litestar, Request, Response, Router, get
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from relay.config import Settings
from relay.ingest.accept import Ingest
from relay.ingest.sqs_consumer import SqsConsumers
from relay.ingest.webhook_endpoint import webhooks
from relay.live_config import LiveConfig
from relay.runtime import on_sighup, running
from relay.store import db
from relay.store.records import Store

log = logging.getLogger("relay.app")

# A caller's request id is kept when it is short and plain (it goes into logs and headers).
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,64}")
# The dashboard loads only its own files: no inline script or style, never framed.
DASHBOARD_HEADERS: list[tuple[bytes, bytes]] = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        b"frame-ancestors 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


# Request ids: a random prefix per process and a counter (cheaper than random bytes per request;
# an id need not be secret, only unique across processes and restarts).
_ID_PREFIX = secrets.token_hex(4)
_id_counter = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):08x}"


class RequestIds:
    """Every HTTP request gets an id (the caller's ``x-request-id`` if sane, else a new one),
    kept in ``scope["state"]["request_id"]`` for error logs and returned as ``x-request-id``;
    ``/ui`` responses also get the dashboard's security headers.

    Plain ASGI, not Litestar middleware: the webhook hot path goes through it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = value.decode() if _SANE_REQUEST_ID.fullmatch(value) else ""
                break
        rid = rid or new_request_id()
        scope.setdefault("state", {})["request_id"] = rid
        extra = [(b"x-request-id", rid.encode())]
        if scope["path"].startswith("/ui"):
            extra += DASHBOARD_HEADERS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Any exception no handler took: logged with its traceback and the request id (which the
    answer carries, so a report can be matched to the log line), answered as a JSON 500."""
    state = request.scope.get("state", {})
    rid = state.get("request_id")
    headers = {} if rid else {"x-request-id": (rid := new_request_id())}
    log.error(
        "unhandled error answering %s %s",
        request.method[:16],
        request.url.path[:200],
        exc_info=exc,
        extra={"request_id": rid},
    )
    body = {"status_code": 500, "detail": "Internal Server Error", "request_id": rid}
    return Response(body, status_code=HTTP_500_INTERNAL_SERVER_ERROR, headers=headers)


@get("/healthz", sync_to_thread=False)
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


# Readiness proves writes: by an ingest commit this recent, else by a probe. The probe never
# waits longer than a load balancer's probe does (a writer holding SQLite's lock would stall it).
WRITE_PROOF_AGE = 10.0
WRITE_PROBE_WAIT = 2.0


@get("/readyz")
async def readyz(state: State) -> Response[dict[str, Any]]:
    """The database answers, takes writes, and its schema is the one this code needs.

    SQS consumers are reported but never make this 503: an unreachable queue is retried in the
    background, and restarting the process (or pulling it from a load balancer) would not help.
    """
    store: Store = state.store
    consumers: SqsConsumers | None = state.get("sqs")
    sqs = {"sqs": consumers.snapshot()} if consumers else {}
    head = db.head_revision()
    ingest: Ingest = state.ingest
    try:
        current = await db.current_revision(store.engine)
        if current == head and not ingest.committed_within(WRITE_PROOF_AGE):
            await db.accepts_writes(store.engine, wait=WRITE_PROBE_WAIT)
    except Exception as exc:
        body = {"status": "unavailable", "database": str(exc)[:200], **sqs}
        return Response(body, status_code=503)
    ok = current == head
    body = {
        "status": "ok" if ok else "unavailable",
        "database": "ok",
        "schema": current,
        "schema_head": head,
        **sqs,
    }
    return Response(body, status_code=200 if ok else 503)


def tune_gc() -> None:
    """Fewer, cheaper cyclic collections for a long-running service process (not for tests,
    which start many apps in one process).

    Each request allocates thousands of short-lived objects, so with the default thresholds a
    full collection walks every object the process holds every few seconds: that pause was the
    ingest p99 (bench/README.md has the figures). Objects alive at start-up (modules, config) are
    frozen out of collection; cyclic garbage is still collected, just in larger
    rounds, and reference counting frees everything else at once as before.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def create_app(
    settings: Settings,
    *,
    dispatch: bool = True,
    auto_migrate: bool | None = None,
    sqs: bool | None = None,
    live: LiveConfig | None = None,
    reload_on_sighup: bool = False,
) -> Litestar:
    """``sqs``: consume the SQS integrations' queues here (None: as ``sqs.consume_in`` says).
    ``live``: the config holder reloads swap; ``reload_on_sighup``: SIGHUP reloads the file
    (``relay serve``: signals reach the main thread only, and tests run apps in any thread).

    The lifespan is the ``serve`` runtime; the routes find its parts on ``app.state``.
    """
    live = live or LiveConfig(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with (
            running(
                settings,
                role="serve",
                dispatch=dispatch,
                sqs=sqs,
                auto_migrate=auto_migrate,
                live=live,
            ) as rt,
            on_sighup(rt.reloader) if reload_on_sighup else contextlib.nullcontext(),
        ):
            app.state.store = rt.store
            app.state.ingest = rt.ingest
            app.state.dispatcher = rt.dispatcher
            app.state.queries = rt.queries
            app.state.sqs = rt.sqs
            app.state.reloader = rt.reloader
            yield

    operations: dict[str, Any] = {}
    if settings.admin.token:  # otherwise the admin API and dashboard paths do not exist (404)
        from relay.admin.api import bearer_guard, openapi_components, routers
        from relay.admin.auth import FailureThrottle, throttling
        from relay.ui import session_middleware, template_config, ui_router

        throttle = FailureThrottle()  # one budget of wrong tokens for the API and the dashboard
        guarded = throttling(throttle)
        api = Router("/", route_handlers=routers(settings), **guarded)
        operations = {
            "route_handlers": [api, ui_router(settings, throttle)],
            "template_config": template_config(live),
            "middleware": [session_middleware(settings)],
            # the schema describes the admin API: it asks for the same token
            "openapi_config": OpenAPIConfig(
                title="relay",
                version="0.1.0",
                components=openapi_components(),
                openapi_router=Router(
                    "/schema",
                    route_handlers=[],
                    guards=[*guarded["guards"], bearer_guard(settings.admin.token)],
                    exception_handlers=guarded["exception_handlers"],
                ),
            ),
        }
    return Litestar(
        route_handlers=[webhooks, healthz, readyz, *operations.get("route_handlers", [])],
        lifespan=[lifespan],
        middleware=[RequestIds, *operations.get("middleware", [])],
        exception_handlers={HTTP_500_INTERNAL_SERVER_ERROR: internal_error},
        request_max_body_size=settings.server.max_body_size,
        template_config=operations.get("template_config"),
        openapi_config=operations.get("openapi_config"),  # none without the admin API
        logging_config=None,  # relay.logs configures logging; Litestar must not replace it
        debug=False,
    )
