"""The dashboard's incidents panel (``_incidents.html``): relay's own open incidents."""

from __future__ import annotations

from litestar import get
from litestar.di import NamedDependency
from litestar.response import Template

from relay.admin.queries import Queries
from relay.admin.watcher import incident_out

Q = NamedDependency[Queries]


@get("/incidents")
async def incidents_panel(queries: Q) -> Template:
    found = await queries.store.incidents(open_only=True, limit=50)
    return Template("_incidents.html", context={"incidents": [incident_out(i) for i in found]})


HANDLERS = [incidents_panel]
