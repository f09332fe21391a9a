"""Stores the tests open themselves: one at schema head on any database URL, and a real
database error for one row of a batch, on SQLite and PostgreSQL alike (a constraint that refuses
events of one type, never a patch of relay's code)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from sqlalchemy import text

from relay.store import db
from relay.store.records import Store


@contextlib.asynccontextmanager
async def open_store(url: str) -> AsyncIterator[Store]:
    engine = db.create_engine(url)
    await db.ensure_schema(engine, auto_migrate=True)
    store = Store(engine)
    try:
        yield store
    finally:
        await store.close()


async def refuse_type(store: Store, etype: str) -> None:
    """From now on, inserting an event of type ``etype`` violates a constraint."""
    async with store.engine.begin() as conn:
        if store.engine.dialect.name == "sqlite":  # no ADD CONSTRAINT: a trigger that aborts
            await conn.execute(
                text(
                    "CREATE TRIGGER refuse_type BEFORE INSERT ON events "
                    f"WHEN NEW.type = '{etype}' BEGIN SELECT RAISE(ABORT, 'refused type'); END"
                )
            )
        else:
            await conn.execute(
                text(f"ALTER TABLE events ADD CONSTRAINT refuse_type CHECK (type <> '{etype}')")
            )
