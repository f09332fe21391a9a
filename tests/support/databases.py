"""Test databases: PostgreSQL when RELAY_TEST_DATABASE_URL is set, a fresh database per test."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from relay.store import db

PG_URL = os.environ.get("RELAY_TEST_DATABASE_URL")

# the two backends, as fixture params: PostgreSQL only where RELAY_TEST_DATABASE_URL names one
DATABASES = [
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
