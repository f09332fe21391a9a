"""The durable store: events with their deliveries, connector links and state, rejections.

Every write that acknowledges something to the outside world (an HTTP 200, an SQS delete, a
connector's success) is one transaction. The dispatch side (claims, outcomes) is relay.queue.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from relay import numbers
from relay.bulk import BulkInsert
from relay.db import create_sync_engine
from relay.models import (
    attempts,
    connector_state,
    deliveries,
    event_numbers,
    events,
    links,
    rejections,
    utcnow,
)
from relay.queue import ACTIVE, Claim, DeliveryQueue, Outcome
from relay.wildix import Event

__all__ = [
    "ACTIVE",
    "Claim",
    "Incoming",
    "Outcome",
    "Recorded",
    "Store",
    "attempts",
    "connector_state",
    "deliveries",
    "event_numbers",
    "events",
    "links",
    "ordering_key",
    "rejections",
    "utcnow",
]

T = TypeVar("T")


def ordering_key(connector: str, event: Event) -> str:
    """Deliveries of one subject (a call, a user's presence) to one connector run in order."""
    return f"{connector}|{event.integration_id}|{event.call_id or event.id}"


@dataclass(frozen=True, slots=True)
class Incoming:
    """A verified event on its way into the store, with the connectors it was routed to.

    Its digest and phone numbers are worked out when it is made, by the request that brings it:
    that work then overlaps with the commit of the batch before, instead of lengthening its own.
    """

    event: Event
    connectors: Sequence[str]
    transport: str
    meta: dict[str, Any] | None = None
    sha256: str = field(init=False)
    numbers: set[str] = field(init=False)  # what the admin search by phone number looks up

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", hashlib.sha256(self.event.raw).hexdigest())
        object.__setattr__(self, "numbers", numbers.in_data(self.event.data))


@dataclass(frozen=True, slots=True)
class Recorded:
    event_id: int
    duplicate: bool
    deliveries: int


def _owned(
    columns: list[list[Any]], owners: list[tuple[str, str]], ids: dict[tuple[str, str], int]
) -> list[list[Any]]:
    """Prepared child rows (first column: the event id) of the events just inserted."""
    if not columns:
        return columns
    if all(owner in ids for owner in owners):
        return [[ids[owner] for owner in owners], *columns[1:]]
    keep = [n for n, owner in enumerate(owners) if owner in ids]
    return [[ids[owners[n]] for n in keep], *([col[n] for n in keep] for col in columns[1:])]


class Store(DeliveryQueue):
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        dialect = engine.dialect
        self._bulk_events = BulkInsert(
            events,
            [
                "integration_id",
                "type",
                "subject_id",
                "call_id",
                "body_sha256",
                "raw",
                "occurred_at",
                "received_at",
                "transport",
                "transport_meta",
            ],
            dialect,
            on_conflict=["integration_id", "body_sha256"],
            returning=["id", "integration_id", "body_sha256"],
        )
        self._bulk_deliveries = BulkInsert(
            deliveries,
            [
                "event_id",
                "integration_id",
                "connector",
                "ordering_key",
                "state",
                "attempts",
                "next_attempt_at",
                "created_at",
                "updated_at",
            ],
            dialect,
        )
        self._bulk_numbers = BulkInsert(event_numbers, ["event_id", "number"], dialect)
        self._writer: ThreadPoolExecutor | None = None
        self._sync_engine: Engine | None = None
        if self.dialect == "sqlite":
            # SQLite takes one writer at a time anyway; doing each write transaction on one
            # thread with the plain driver costs a single hop from the event loop per batch
            # instead of one per statement, and never makes two writers wait on the file lock.
            self._sync_engine = create_sync_engine(engine.url)
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="relay-sqlite-writer")

    async def write(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in one write transaction (committed when it returns)."""
        if self._writer is not None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._writer, self._write_sync, work)
        async with self.engine.begin() as conn:
            return await conn.run_sync(work)

    def _write_sync(self, work: Callable[[Connection], T]) -> T:
        assert self._sync_engine is not None
        with self._sync_engine.begin() as conn:
            return work(conn)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.shutdown(wait=True)
        if self._sync_engine is not None:
            self._sync_engine.dispose()
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
        """
        now = utcnow()
        keys = [(i.event.integration_id, i.sha256) for i in items]
        first: dict[tuple[str, str], int] = {}
        for n, key in enumerate(keys):
            first.setdefault(key, n)
        candidates = [(key, items[n]) for key, n in first.items()]
        event_columns = self._bulk_events.prepare(
            [
                (
                    key[0],
                    (event := item.event).type,
                    event.id,
                    event.call_id,
                    key[1],
                    event.raw,
                    event.time,
                    now,
                    item.transport,
                    item.meta or {},
                )
                for key, item in candidates
            ]
        )
        # deliveries and phone numbers of every candidate; the event id is filled in once known,
        # and a duplicate's rows are dropped
        owners: list[tuple[str, str]] = []
        delivery_rows: list[tuple[Any, ...]] = []
        number_owners: list[tuple[str, str]] = []
        number_rows: list[tuple[Any, ...]] = []
        for key, item in candidates:
            rows = self.delivery_rows(0, item.event, item.connectors, now)
            delivery_rows += rows
            owners += [key] * len(rows)
            number_rows += [(0, number) for number in item.numbers]
            number_owners += [key] * len(item.numbers)
        delivery_columns = self._bulk_deliveries.prepare(delivery_rows) if delivery_rows else []
        number_columns = self._bulk_numbers.prepare(number_rows) if number_rows else []

        def write(conn: Connection) -> list[Recorded]:
            new = {(r[1], r[2]): int(r[0]) for r in self._bulk_events.run(conn, event_columns)}
            known = dict(new)
            if len(new) < len(first):
                missing = {sha for key in first if key not in new for sha in key[1:]}
                found = conn.execute(
                    select(events.c.id, events.c.integration_id, events.c.body_sha256).where(
                        events.c.body_sha256.in_(missing)
                    )
                )
                known |= {(r.integration_id, r.body_sha256): int(r.id) for r in found}
            self._bulk_deliveries.run(conn, _owned(delivery_columns, owners, new))
            self._bulk_numbers.run(conn, _owned(number_columns, number_owners, new))
            return [
                Recorded(known[key], False, len(items[n].connectors))
                if key in new and first[key] == n
                else Recorded(known[key], True, 0)
                for n, key in enumerate(keys)
            ]

        return await self.write(write)

    @staticmethod
    def delivery_rows(
        event_id: int, event: Event, connectors: Sequence[str], now: datetime
    ) -> list[tuple[Any, ...]]:
        """New pending deliveries of one stored event, for ``add_deliveries``."""
        iid = event.integration_id
        return [
            (event_id, iid, name, ordering_key(name, event), "pending", 0, now, now, now)
            for name in connectors
        ]

    async def add_deliveries(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Deliveries for events already stored (a replay), in one transaction."""
        await self.write(lambda conn: self._bulk_deliveries.execute(conn, rows))

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
        excerpt_limit: int = 16384,
    ) -> int:
        row = {
            "received_at": utcnow(),
            "transport": transport,
            "integration_id": integration_id,
            "reason": reason[:255],
            "status_code": status_code,
            "remote": remote,
            "body_sha256": hashlib.sha256(body).hexdigest() if body is not None else None,
            "body_excerpt": body[:excerpt_limit] if body is not None else None,
            "transport_meta": meta or {},
        }
        return await self.write(
            lambda conn: int(
                conn.execute(insert(rejections).returning(rejections.c.id), row).scalar_one()
            )
        )

    # -- connector links and state ------------------------------------------------------------

    async def get_link(self, connector: str, key: str) -> Any:
        async with self.engine.connect() as conn:
            return await conn.scalar(
                select(links.c.value).where(links.c.connector == connector, links.c.key == key)
            )

    async def set_link(self, connector: str, key: str, value: Any) -> None:
        now = utcnow()
        stmt = self._insert(links).values(connector=connector, key=key, value=value, updated_at=now)
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
        stmt = self._insert(connector_state).values(
            connector=connector, state=state, updated_at=now
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["connector"], set_={"state": state, "updated_at": now}
        )
        await self.write(lambda conn: conn.execute(stmt))

    # -- inspection ---------------------------------------------------------------------------

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def delivery_counts(self) -> dict[tuple[str, str], int]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(deliveries.c.connector, deliveries.c.state, func.count()).group_by(
                    deliveries.c.connector, deliveries.c.state
                )
            )
            return {(r[0], r[1]): int(r[2]) for r in rows}
