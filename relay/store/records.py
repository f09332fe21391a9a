"""The durable store: events with their deliveries, connector links and state, rejections.

Every write that acknowledges something to the outside world (an HTTP 200, an SQS delete, a
connector's success) is one transaction. The dispatch side (claims, outcomes) is relay.store.queue;
what differs between databases is their backend's (relay.store.backend: relay.store.sqlite,
relay.store.postgres), picked here once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import delete, func, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from relay.store.backend import Backend
from relay.store.circuits import Circuits
from relay.store.incidents import Incidents
from relay.store.postgres import PgBackend
from relay.store.queue import DeliveryQueue
from relay.store.rows import Incoming, Key, Recorded, RowRefused
from relay.store.sqlite import SqliteBackend
from relay.store.tables import connector_state, deliveries, links, rejections, utcnow
from relay.wildix import Event

__all__ = ["STORE_ERRORS", "Store", "open_backend"]

T = TypeVar("T")
# What a failed store write raises: SQLAlchemy's errors, and the driver's own on the statements
# that bypass SQLAlchemy (PostgreSQL ingest); the disk or the network may fail underneath both;
# and RowRefused, when ingest's database refused what an event holds (a source that tells it
# apart answers the sender 4xx instead of "retry later").
STORE_ERRORS = (
    RowRefused,
    SQLAlchemyError,
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
# The backend of each database relay runs on, by SQLAlchemy dialect name.
BACKENDS: dict[str, type[SqliteBackend] | type[PgBackend]] = {
    backend.dialect: backend for backend in (SqliteBackend, PgBackend)
}


def open_backend(engine: AsyncEngine) -> Backend:
    """The one place a database is told from another: the backend for ``engine``'s dialect."""
    try:
        backend = BACKENDS[engine.dialect.name]
    except KeyError:
        raise ValueError(f"relay does not run on {engine.dialect.name}") from None
    return backend(engine)


# What a rejection keeps of what its sender chose. Bodies: 16 KiB once the signature verified
# (Wildix sent something we could not use: worth reading), 4 KiB before (anyone's bytes).
SIGNED_EXCERPT = 16384
UNSIGNED_EXCERPT = 4096
REJECTIONS_KEPT = 10_000  # rows; see record_rejection
_META_VALUE = 255
_META_KEYS = 16
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_UNPRINTABLE_IN_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def clip(text: str | None, limit: int, *, lines: bool = False) -> str | None:
    """At most ``limit`` characters, control characters replaced, "…" marking a cut: safe to
    store, log and show whatever the client sent. ``lines`` keeps tabs and line breaks (a
    body shown as text), which a single-line field (an id, a log value) must not have."""
    if text is None:
        return None
    cut = text if len(text) <= limit else text[: limit - 1] + "…"
    return (_UNPRINTABLE_IN_TEXT if lines else _UNPRINTABLE).sub("?", cut)


def bounded_meta(meta: dict[str, Any] | None, body: bytes | None) -> dict[str, Any]:
    """Transport details with every text cut, plus ``body_size``: what the excerpt was cut from."""
    out: dict[str, Any] = {}
    for key, value in list((meta or {}).items())[:_META_KEYS]:
        if not (value is None or isinstance(value, bool | int | float)):
            value = clip(value if isinstance(value, str) else repr(value), _META_VALUE)
        out[clip(str(key), 64) or ""] = value
    if body is not None:
        out["body_size"] = len(body)
    return out


class Store(DeliveryQueue, Circuits, Incidents):
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.backend = open_backend(engine)

    async def write(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in one write transaction (committed when it returns)."""
        return await self.backend.write(work)

    async def close(self) -> None:
        await self.backend.close()
        await self.engine.dispose()

    # -- ingest -------------------------------------------------------------------------------

    async def record(
        self,
        event: Event,
        connectors: Sequence[str],
        *,
        transport: str,
        meta: dict[str, Any] | None = None,
    ) -> Recorded:
        """Store one event with its deliveries; see ``record_batch``."""
        [recorded] = await self.record_batch([Incoming(event, connectors, transport, meta)])
        return recorded

    async def record_batch(self, items: Sequence[Incoming]) -> list[Recorded]:
        """Store events and one delivery per matched connector in ONE transaction.

        Dedupe is on the body's SHA-256 per integration, exact inside the batch (the first copy
        is accepted, later ones are duplicates) and across batches (the unique constraint).
        Every row is built before the transaction: only the SQL runs inside it.

        Raises RowRefused when the database refuses what a row holds (a data or integrity
        error): nothing of the batch is stored, and the group commit retries the others
        without the row to blame. Any other error means the store itself failed.
        """
        now = utcnow()
        keys = [item.key for item in items]
        first: dict[Key, int] = {}
        for n, key in enumerate(keys):
            first.setdefault(key, n)
        candidates = [items[n] for n in first.values()]
        new, known = await self.backend.record_events(candidates, now)
        return [
            Recorded(known[key], False, len(items[n].connectors))
            if key in new and first[key] == n
            else Recorded(known[key], True, 0)
            for n, key in enumerate(keys)
        ]

    async def add_deliveries(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Deliveries for events already stored (a replay), in one transaction."""
        await self.backend.add_deliveries(rows)

    async def record_rejection(
        self,
        *,
        transport: str,
        reason: str,
        integration_id: str | None = None,
        status_code: int | None = None,
        remote: str | None = None,
        body: bytes | None = None,
        meta: dict[str, Any] | None = None,
        excerpt_limit: int = SIGNED_EXCERPT,
        keep: int = REJECTIONS_KEPT,
    ) -> int:
        """Keep one refused request, every field cut to its column (SQLite enforces no width)
        and the body to ``excerpt_limit`` bytes (its full size and digest are kept).

        The table holds at most ``keep`` rows: each insert deletes, in its own transaction, the
        rows more than ``keep`` ids older, through the primary key: one index range, no count.
        Retention (``retention.rejections``) still ages rows out; the cap bounds a flood between
        two purges, whatever its rate.
        """
        row = {
            "received_at": utcnow(),
            "transport": clip(transport, 16),
            "integration_id": clip(integration_id, 64),
            "reason": clip(reason, 255) or "",
            "status_code": status_code,
            "remote": clip(remote, 255),
            "body_sha256": hashlib.sha256(body).hexdigest() if body is not None else None,
            "body_excerpt": body[:excerpt_limit] if body is not None else None,
            "transport_meta": bounded_meta(meta, body),
        }

        def insert_and_cap(conn: Connection) -> int:
            new_id = int(
                conn.execute(insert(rejections).returning(rejections.c.id), row).scalar_one()
            )
            if new_id > keep:
                conn.execute(delete(rejections).where(rejections.c.id <= new_id - keep))
            return new_id

        return await self.write(insert_and_cap)

    # -- connector links and state ------------------------------------------------------------

    async def get_link(self, connector: str, key: str) -> Any:
        async with self.engine.connect() as conn:
            return await conn.scalar(
                select(links.c.value).where(links.c.connector == connector, links.c.key == key)
            )

    async def set_link(self, connector: str, key: str, value: Any) -> None:
        now = utcnow()
        stmt = self.backend.insert(links).values(
            connector=connector, key=key, value=value, updated_at=now
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["connector", "key"], set_={"value": value, "updated_at": now}
        )
        await self.write(lambda conn: conn.execute(stmt))

    async def delete_link(self, connector: str, key: str) -> None:
        stmt = delete(links).where(links.c.connector == connector, links.c.key == key)
        await self.write(lambda conn: conn.execute(stmt))

    async def get_state(self, connector: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            value = await conn.scalar(
                select(connector_state.c.state).where(connector_state.c.connector == connector)
            )
            return dict(value or {})

    async def set_state(self, connector: str, state: dict[str, Any]) -> None:
        now = utcnow()
        stmt = self.backend.insert(connector_state).values(
            connector=connector, state=state, updated_at=now
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["connector"], set_={"state": state, "updated_at": now}
        )
        await self.write(lambda conn: conn.execute(stmt))

    # -- inspection ---------------------------------------------------------------------------

    async def delivery_counts(self) -> dict[tuple[str, str], int]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(deliveries.c.connector, deliveries.c.state, func.count()).group_by(
                    deliveries.c.connector, deliveries.c.state
                )
            )
            return {(r[0], r[1]): int(r[2]) for r in rows}
