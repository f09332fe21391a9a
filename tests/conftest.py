"""Pytest fixtures only: databases (SQLite always, PostgreSQL when configured), moto's SQS server
and a store at schema head. The helpers the tests share live in tests/support."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.store import db
from relay.store.records import Store
from tests.support.databases import DATABASES, PG_URL, postgres_database


@pytest.fixture(params=DATABASES)
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


@pytest.fixture(scope="session")
def moto_sqs() -> Iterator[Any]:
    """moto's SQS server on 127.0.0.1 for the whole session; tests make their own queues."""
    from tests.fakes.sqs import MotoSqs

    server = MotoSqs()
    yield server
    server.stop()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """A real SQLite store at schema head, for tests that drive connectors directly."""
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path}/store.db")
    await db.migrate(engine)
    store = Store(engine)
    yield store
    await store.close()
