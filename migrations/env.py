"""Alembic environment: `relay migrate` hands us a connection; the CLI reads RELAY_DATABASE_URL."""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

from relay.store.db import create_engine
from relay.store.tables import Base

config = context.config
target_metadata = Base.metadata


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_with_url(url: str) -> None:
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(run)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=os.environ.get("RELAY_DATABASE_URL", "sqlite:///./relay.db"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
elif (conn := config.attributes.get("connection")) is not None:
    run(conn)
else:
    asyncio.run(
        run_with_url(os.environ.get("RELAY_DATABASE_URL", "sqlite+aiosqlite:///./relay.db"))
    )
