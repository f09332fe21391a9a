"""PostgreSQL ingest: a whole batch of events as one statement on a held connection.

One statement is one transaction in autocommit, so a batch costs one round trip: the events,
and the deliveries and phone numbers of those that are new. The SQLite path is in relay.store.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from relay.store.bulk_insert import BulkInsert
from relay.store.held_connections import HeldConnections
from relay.store.rows import EVENT_COLUMNS, Incoming, Key, event_row, ordering_key
from relay.store.tables import deliveries, event_numbers, events

# the parent key of a child row; parameters: one array per events column, then per child table
# the key and its own columns, then one scalar for the batch's time
_KEY = [("integration_id", "VARCHAR(64)"), ("body_sha256", "VARCHAR(64)")]
_DELIVERIES = len(EVENT_COLUMNS) + 1  # $10: key, connector, ordering_key
_NUMBERS = _DELIVERIES + len(_KEY) + 2  # $14: key, number
_NOW = f"${_NUMBERS + len(_KEY) + 1}"  # $17
# what a connection that died while held raises on its next use
# (InternalClientError: the server's goodbye arrived while the connection sat idle)
_LOST = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
)


class PgIngest:
    def __init__(self, engine: AsyncEngine) -> None:
        dialect = engine.dialect
        self.held = HeldConnections(engine)
        self._events = BulkInsert(events, EVENT_COLUMNS, dialect, fixed={"received_at": _NOW})
        dl = BulkInsert(
            deliveries,
            ["event_id", "connector", "ordering_key"],
            dialect,
            fixed={
                "integration_id": "ev.integration_id",
                "state": "'pending'",
                "attempts": "0",
                "next_attempt_at": _NOW,
                "created_at": _NOW,
                "updated_at": _NOW,
            },
        )
        nb = BulkInsert(event_numbers, ["event_id", "number"], dialect)
        # A body already stored comes back from its unique index (a no-op update of a column no
        # index holds) with its id, so dedupe needs no lookup of its own: a lookup is planned
        # once per connection, and one planned while the table was small went on scanning all
        # of it. ``xmax = 0`` tells the rows inserted here from those found; a concurrent batch
        # with the same body makes this one wait for its commit, then find its row.
        self.sql = (
            f"WITH ev AS ({self._events.head} {self._events.pg_select(1)}"
            " ON CONFLICT (integration_id, body_sha256) DO UPDATE SET type = events.type"
            " RETURNING id, integration_id, body_sha256, xmax = 0 AS inserted),"
            f" dl AS ({dl.head} {dl.pg_select(_DELIVERIES, owner=_KEY, only='inserted')}),"
            f" nb AS ({nb.head} {nb.pg_select(_NUMBERS, owner=_KEY, only='inserted')})"
            " SELECT id, integration_id, body_sha256, inserted FROM ev"
        )

    async def record(
        self, items: Sequence[Incoming], now: datetime
    ) -> tuple[dict[Key, int], dict[Key, int]]:
        """Store distinct events; the ids of those inserted, and the ids of all of them."""
        args = [
            *self._events.prepare([event_row(item) for item in items]),
            *_arrays(
                [
                    (*item.key, name, ordering_key(name, item.event))
                    for item in items
                    for name in item.connectors
                ],
                4,
            ),
            *_arrays([(*item.key, number) for item in items for number in item.numbers], 3),
            now,
        ]
        try:
            async with self.held.connection() as raw:
                rows = await raw.fetch(self.sql, *args)
        except _LOST:
            # A held connection the server dropped (a restart, a failover): once more on a new
            # one. Safe even if the first one committed: stored bodies come back as such.
            async with self.held.connection() as raw:
                rows = await raw.fetch(self.sql, *args)
        return {(r[1], r[2]): r[0] for r in rows if r[3]}, {(r[1], r[2]): r[0] for r in rows}

    async def close(self) -> None:
        await self.held.close()


def _arrays(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows → one list per column (asyncpg sends each as an array)."""
    return [list(column) for column in zip(*rows, strict=True)] or [[] for _ in range(width)]
