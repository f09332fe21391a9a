"""Litestar app factory: the HTTP routes, over the parts :func:`relay.runtime.running` builds."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

from litestar import Litestar, Response, get
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components

from relay.config import Settings
from relay.ingest.sqs_consumer import SqsConsumers
from relay.ingest.webhook_endpoint import webhooks
from relay.runtime import running
from relay.store import db
from relay.store.records import Store

log = logging.getLogger("relay.app")


@get("/healthz", sync_to_thread=False)
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@get("/readyz")
async def readyz(state: State) -> Response[dict[str, Any]]:
    """The database answers and its schema is the one this code needs.

    SQS consumers are reported but never make this 503: an unreachable queue is retried in the
    background, and restarting the process (or pulling it from a load balancer) would not help.
    """
    store: Store = state.store
    consumers: SqsConsumers | None = state.get("sqs")
    sqs = {"sqs": consumers.snapshot()} if consumers else {}
    try:
        current = await db.current_revision(store.engine)
    except Exception as exc:
        body = {"status": "unavailable", "database": str(exc)[:200], **sqs}
        return Response(body, status_code=503)
    head = db.head_revision()
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
) -> Litestar:
    """``sqs``: consume the SQS integrations' queues here (None: as ``sqs.consume_in`` says).

    The lifespan is the ``serve`` runtime; the routes find its parts on ``app.state``.
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with running(
            settings, role="serve", dispatch=dispatch, sqs=sqs, auto_migrate=auto_migrate
        ) as rt:
            app.state.store = rt.store
            app.state.ingest = rt.ingest
            app.state.dispatcher = rt.dispatcher
            app.state.queries = rt.queries
            app.state.sqs = rt.sqs
            yield

    operations: dict[str, Any] = {}
    if settings.admin.token:  # otherwise the admin API and dashboard paths do not exist (404)
        from relay.admin.api import openapi_components, routers
        from relay.ui import session_middleware, template_config, ui_router

        operations = {
            "route_handlers": [*routers(settings), ui_router(settings)],
            "template_config": template_config(),
            "middleware": [session_middleware(settings)],
            "components": openapi_components(),
        }
    return Litestar(
        route_handlers=[webhooks, healthz, readyz, *operations.get("route_handlers", [])],
        lifespan=[lifespan],
        middleware=operations.get("middleware", []),
        request_max_body_size=settings.server.max_body_size,
        template_config=operations.get("template_config"),
        openapi_config=OpenAPIConfig(
            title="relay", version="0.1.0", components=operations.get("components", Components())
        ),
        logging_config=None,  # relay.logs configures logging; Litestar must not replace it
        debug=False,
    )
