"""Operations: the admin API, the dashboard, metrics, replay and the data lifecycle.

All of the web part is mounted only when ``admin.token`` is set; ``mount`` says what to add to
the app. (Web imports stay inside it: the CLI commands of this package need none of them.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from litestar.openapi.spec import Components
    from litestar.template import TemplateConfig

    from relay.config import Settings


@dataclass
class Mount:
    route_handlers: list[Any]
    template_config: TemplateConfig[Any] | None
    openapi_components: Components
    middleware: list[Any]


def mount(settings: Settings) -> Mount:
    from litestar.openapi.spec import Components

    if not settings.admin.token:
        return Mount([], None, Components(), [])
    from relay.admin.api import openapi_components, routers
    from relay.ui import session_middleware, template_config, ui_router

    return Mount(
        route_handlers=[*routers(settings), ui_router(settings)],
        template_config=template_config(),
        openapi_components=openapi_components(),
        middleware=[session_middleware(settings)],
    )
