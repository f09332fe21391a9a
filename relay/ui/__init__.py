"""The dashboard at ``/ui``: server-rendered Jinja pages, htmx for the live bits, no build step.

Login is the admin token, throttled per client address and overall (``relay.admin.auth``); the
session is an encrypted cookie (keyed from the token, so changing the token logs everyone out)
naming a session this process opened and has not closed (so logging out ends it, and so does a
restart), and every form and htmx request carries a CSRF token.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from litestar import Request, Response, Router
from litestar.config.csrf import CSRFConfig
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers import BaseRouteHandler
from litestar.middleware import DefineMiddleware
from litestar.middleware.csrf import CSRFMiddleware
from litestar.middleware.session.client_side import CookieBackendConfig
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template import TemplateConfig

from relay.admin.api import provide_queries
from relay.admin.auth import FailureThrottle
from relay.admin.filters import BadFilter
from relay.config import Settings
from relay.live_config import LiveConfig
from relay.store.tables import utcnow
from relay.ui.formats import FILTERS
from relay.ui.sessions import Sessions

HERE = Path(__file__).resolve().parent
PREFIX = "/ui"


def _key(token: str, purpose: str) -> bytes:
    return hashlib.sha256(f"relay-ui:{purpose}:".encode() + token.encode()).digest()


def _span(seconds: float | None) -> str:
    """``3725`` → ``1h``: the one unit a glance needs."""
    if seconds is None:
        return "—"
    whole = int(abs(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def _ago(value: datetime | None) -> str:
    if value is None:
        return "—"
    seconds = (utcnow() - value).total_seconds()
    return f"in {_span(seconds)}" if seconds < 0 else f"{_span(seconds)} ago"


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def template_config(live: LiveConfig) -> TemplateConfig[JinjaTemplateEngine]:
    """``live``: the footer of every page shows the config's version and when it was loaded."""

    def setup(engine: JinjaTemplateEngine) -> None:
        env = engine.engine
        env.filters.update(ago=_ago, span=_span, pretty=_pretty, **FILTERS)
        env.globals["live_config"] = live
        env.autoescape = True

    return TemplateConfig(
        directory=HERE / "templates", engine=JinjaTemplateEngine, engine_callback=setup
    )


def logged_in(sessions: Sessions) -> Any:
    def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        if handler.opt.get("public"):
            return
        if not sessions.is_open(connection.session.get("sid")):
            raise NotAuthorizedException("log in first")

    return guard


def _to_login(request: Request[Any, Any, Any], _: Exception) -> Response[Any]:
    """Pages redirect; htmx swaps would otherwise paste a login page into a table cell."""
    if request.headers.get("hx-request"):
        return Response(b"", status_code=401, headers={"HX-Redirect": f"{PREFIX}/login"})
    return Redirect(f"{PREFIX}/login")


def _csrf_failed(_: Request[Any, Any, Any], __: Exception) -> Response[Any]:
    message = "The form expired. Reload the page and try again."
    return Template("error.html", context={"message": message}, status_code=403)


def _bad_filter(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    return Template("error.html", context={"message": str(exc)}, status_code=400)


def session_middleware(settings: Settings) -> DefineMiddleware:
    """App-level (Litestar deep-copies router middleware, and the cipher cannot be copied),
    so it skips every path outside the dashboard."""
    admin = settings.admin
    return CookieBackendConfig(
        secret=_key(admin.token, "session"),
        key="relay_session",
        path=PREFIX,
        max_age=int(admin.session_lifetime),
        secure=admin.secure_cookies,
        httponly=True,
        samesite="strict",
        exclude=r"^/(?!ui(/|$)).",  # (not bare "/": Litestar warns on match-all patterns)
    ).middleware


def ui_router(settings: Settings, throttle: FailureThrottle) -> Router:
    from relay.ui.circuit_panel import HANDLERS as CIRCUITS
    from relay.ui.incident_panel import HANDLERS as INCIDENTS
    from relay.ui.pages import HANDLERS

    admin = settings.admin
    csrf = CSRFConfig(
        secret=_key(admin.token, "csrf").hex(),
        cookie_name="relay_csrf",
        cookie_path=PREFIX,
        cookie_secure=admin.secure_cookies,
        cookie_samesite="strict",
    )
    static = create_static_files_router(
        path="/static", directories=[HERE / "static"], opt={"public": True}
    )
    sessions = Sessions(admin.session_lifetime)
    return Router(
        path=PREFIX,
        route_handlers=[*HANDLERS, *CIRCUITS, *INCIDENTS, static],
        middleware=[DefineMiddleware(CSRFMiddleware, config=csrf)],
        guards=[logged_in(sessions)],
        dependencies={
            "queries": Provide(provide_queries, sync_to_thread=False),
            "sessions": Provide(lambda: sessions, sync_to_thread=False),
            "throttle": Provide(lambda: throttle, sync_to_thread=False),
        },
        exception_handlers={
            NotAuthorizedException: _to_login,
            PermissionDeniedException: _csrf_failed,
            BadFilter: _bad_filter,
        },
        include_in_schema=False,
    )
