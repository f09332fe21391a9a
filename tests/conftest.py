"""Shared test machinery: databases (SQLite always, PostgreSQL when configured), settings, and a
relay running for real on a loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from sqlalchemy import select
from sqlalchemy.engine import make_url

from relay.app import create_app
from relay.config import Settings, parse_config
from relay.registry import connector_types
from relay.store import db
from relay.store.records import Store
from relay.store.tables import attempts, deliveries, events
from relay.wildix import samples
from relay.wildix.signature import sign
from tests.fakes.asgi import serve

PG_URL = os.environ.get("RELAY_TEST_DATABASE_URL")
SECRET = "R8vYq2LmTz0pWn4XcKs7JdHf5Bg1Ae"


def fixtures_dir() -> Path:
    """The Wildix samples shipped in the package (relay/wildix/samples)."""
    return Path(str(samples()))


def fixture(name: str) -> bytes:
    return (fixtures_dir() / f"{name}.json").read_bytes()


@contextlib.asynccontextmanager
async def postgres_database(*, migrate: bool = True) -> AsyncIterator[str]:
    """A fresh, empty database per test, dropped afterwards."""
    assert PG_URL
    url = make_url(PG_URL)
    name = f"relay_t_{uuid.uuid4().hex[:12]}"
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    target = url.set(database=name).render_as_string(hide_password=False)
    if migrate:  # what `relay migrate` does before a PostgreSQL deployment starts
        engine = db.create_engine(target)
        await db.migrate(engine)
        await engine.dispose()
    try:
        yield target
    finally:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgres",
            marks=[
                pytest.mark.postgres,
                pytest.mark.skipif(
                    not PG_URL, reason="set RELAY_TEST_DATABASE_URL to run against PostgreSQL"
                ),
            ],
        ),
    ]
)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/relay.db"
        return
    async with postgres_database() as url:
        yield url


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    if not PG_URL:
        pytest.skip("set RELAY_TEST_DATABASE_URL to run against PostgreSQL")
    async with postgres_database() as url:
        yield url


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


@pytest.fixture(scope="session")
def moto_sqs() -> Iterator[Any]:
    """moto's SQS server on 127.0.0.1 for the whole session; tests make their own queues."""
    from tests.fakes.sqs import MotoSqs

    server = MotoSqs()
    yield server
    server.stop()


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
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = await check()
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {what}; last value {value!r}")
            await asyncio.sleep(0.05)

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
            return rows if rows and all(r.state in ("succeeded", "dead") for r in rows) else None

        return await self.wait_until(done, timeout, "deliveries to settle")


@contextlib.asynccontextmanager
async def run_relay(settings: Settings, *, dispatch: bool = True) -> AsyncIterator[RunningRelay]:
    """The real app under uvicorn on 127.0.0.1:<free port>, in this event loop."""
    app = create_app(settings, dispatch=dispatch)
    async with serve(app) as url, httpx.AsyncClient(timeout=10) as client:
        yield RunningRelay(url, app, client)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """A real SQLite store at schema head, for tests that drive connectors directly."""
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path}/store.db")
    await db.migrate(engine)
    store = Store(engine)
    yield store
    await store.close()
