"""A relay as the tests run it: config written the way an admin writes it, the real app on a
loopback port in the test's event loop, and a `relay worker` process."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import yaml
from sqlalchemy import select

from relay import logs
from relay.app import create_app
from relay.config import Settings, parse_config
from relay.registry import connector_types
from relay.store.records import Store
from relay.store.tables import attempts, deliveries, events
from relay.wildix.signature import sign
from tests.fakes.asgi import serve
from tests.support.samples import fixture
from tests.support.waiting import eventually

SECRET = "R8vYq2LmTz0pWn4XcKs7JdHf5Bg1Ae"
# a settled delivery: sent, failed for good, or left out for a newer state of its call
SETTLED = ("succeeded", "dead", "superseded")
# a delivery that did not fail: sent, or superseded (a coalescing connector sent a newer state)
DONE = ("succeeded", "superseded")


def config_dict(
    db_url: str,
    connectors: dict[str, Any],
    routes: list[dict[str, Any]] | None = None,
    *,
    integration: str = "q7m2xk",
    extra: dict[str, Any] | None = None,
    plugin_dirs: list[str] | None = None,
) -> dict[str, Any]:
    """A config.yaml's content, with fast retries for tests."""
    if routes is None:
        routes = [{"connector": name, "events": ["*"]} for name in connectors]
    data: dict[str, Any] = {
        "database": {"url": db_url},
        "delivery": {"max_attempts": 5, "schedule": ["0.2s"], "timeout": "5s", "jitter": 0},
        "dispatch": {"poll_interval": "0.1s", "lease": "2s", "shutdown_grace": "2s"},
        "logging": {"level": "DEBUG", "format": "text"},
        "plugins": {"dirs": plugin_dirs or []},
        "connectors": connectors,
        "integrations": {
            integration: {"name": "Test", "secret": SECRET, "routes": routes},
            "h3p9ta": {"name": "Legacy PBX", "secret": SECRET, "routes": routes},
        },
    }
    for key, value in (extra or {}).items():
        data[key] = value
    return data


def make_settings(db_url: str, connectors: dict[str, Any], *args: Any, **kwargs: Any) -> Settings:
    """Settings as an admin would write them, through the real YAML loader."""
    data = config_dict(db_url, connectors, *args, **kwargs)
    return parse_config(
        yaml.safe_dump(data), connector_types=connector_types(data["plugins"]["dirs"]), env={}
    )


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def start_worker(config: Path) -> subprocess.Popen[bytes]:
    """A real `relay worker` process: what a deployment runs next to `relay serve`."""
    return subprocess.Popen(
        [sys.executable, "-m", "relay", "--config", str(config), "worker"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def call_body(call_id: str, name: str = "call_completed") -> bytes:
    """A sample call event re-encoded under a new call id, so each test has its own call."""
    body = msgspec.json.decode(fixture(name))
    body["id"] = body["data"]["id"] = call_id
    return msgspec.json.encode(body)


@dataclass
class RunningRelay:
    url: str
    app: Any
    client: httpx.AsyncClient

    @property
    def store(self) -> Store:
        return self.app.state.store

    async def post(
        self,
        body: bytes,
        *,
        integration: str | None = "q7m2xk",
        secret: str | None = SECRET,
        signature: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        path = f"/webhooks/{integration}" if integration else "/webhooks"
        hdrs = {"content-type": "application/json", **(headers or {})}
        if signature is not None:
            hdrs["x-signature"] = signature
        elif secret is not None:
            hdrs["x-signature"] = sign(body, secret)
        return await self.client.post(self.url + path, content=body, headers=hdrs)

    async def rows(self, table: Any, *where: Any) -> list[Any]:
        async with self.store.engine.connect() as conn:
            return list((await conn.execute(select(table).where(*where))).all())

    async def wait_until(
        self, check: Callable[[], Any], timeout: float = 15.0, what: str = "condition"
    ) -> Any:
        return await eventually(check, what, timeout)

    async def deliveries(self) -> list[Any]:
        return await self.rows(deliveries)

    async def events(self) -> list[Any]:
        return await self.rows(events)

    async def attempts(self, delivery_id: int) -> list[Any]:
        rows = await self.rows(attempts, attempts.c.delivery_id == delivery_id)
        return sorted(rows, key=lambda r: r.id)

    async def settled(self, timeout: float = 15.0) -> list[Any]:
        """Wait until no delivery is pending or running; return them all."""

        async def done() -> list[Any] | None:
            rows = await self.deliveries()
            return rows if rows and all(r.state in SETTLED for r in rows) else None

        return await self.wait_until(done, timeout, "deliveries to settle")


@contextlib.asynccontextmanager
async def run_relay(settings: Settings, *, dispatch: bool = True) -> AsyncIterator[RunningRelay]:
    """The real app under uvicorn on 127.0.0.1:<free port>, in this event loop."""
    app = create_app(settings, dispatch=dispatch)
    async with serve(app) as url, httpx.AsyncClient(timeout=10) as client:
        yield RunningRelay(url, app, client)


@contextlib.contextmanager
def capture_log(name: str = "relay", level: int | None = None) -> Iterator[io.StringIO]:
    """What relay's JSON log handler would write (unredacted) for logger ``name``; the app
    replaces the root logger's handlers, so pytest's caplog sees none of it."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonLines())
    logger = logging.getLogger(name)
    before = logger.level
    logger.addHandler(handler)
    if level is not None:
        logger.setLevel(level)
    try:
        yield out
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)
