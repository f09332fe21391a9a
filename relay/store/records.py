"""The durable store: events with their deliveries, connector links and state, rejections.

Every write that acknowledges something to the outside world (an HTTP 200, an SQS delete, a
connector's success) is one transaction. The dispatch side (claims, outcomes) is relay.store.queue;
PostgreSQL's ingest statement is relay.store.postgres.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import delete, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from relay.store.bulk_insert import BulkInsert
from relay.store.db import create_inline_engine, create_sync_engine
from relay.store.postgres import PgIngest
from relay.store.queue import DeliveryQueue
from relay.store.rows import EVENT_COLUMNS, Incoming, Key, Recorded, event_row, ordering_key
from relay.store.tables import (
    connector_state,
    deliveries,
    event_numbers,
    events,
    links,
    rejections,
    utcnow,
)
from relay.wildix import Event

__all__ = ["STORE_ERRORS", "Store"]

T = TypeVar("T")
log = logging.getLogger("relay.store")
# What a failed store write raises: SQLAlchemy's errors, and the driver's own on the statements
# that bypass SQLAlchemy (PostgreSQL ingest); the disk or the network may fail underneath both.
STORE_ERRORS = (
    SQLAlchemyError,
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
CHECKPOINT_EVERY = 50  # inline commits between two WAL checkpoints (~25 pages each at 32 events)


def _owned(columns: list[list[Any]], owners: list[Key], ids: dict[Key, int]) -> list[list[Any]]:
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
            [*EVENT_COLUMNS, "received_at"],
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
        self._pg_ingest = PgIngest(engine) if self.dialect == "postgresql" else None
        self._writer: ThreadPoolExecutor | None = None
        self._sync_engine: Engine | None = None
        self._inline_engine: Engine | None = None
        self._inline_commits = 0
        self._thread_writes = 0  # queued or running on the writer thread
        self._checkpointing = False
        if self.dialect == "sqlite":
            # SQLite takes one writer at a time anyway; doing each write transaction on one
            # thread with the plain driver costs a single hop from the event loop per batch
            # instead of one per statement, and never makes two writers wait on the file lock.
            self._sync_engine = create_sync_engine(engine.url)
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="relay-sqlite-writer")
            self._inline_engine = create_inline_engine(engine.url)

    async def write(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in one write transaction (committed when it returns)."""
        if self._writer is not None:
            loop = asyncio.get_running_loop()
            self._thread_writes += 1
            try:
                return await loop.run_in_executor(self._writer, self._write_sync, work)
            finally:
                self._thread_writes -= 1
        async with self.engine.begin() as conn:
            return await conn.run_sync(work)

    def _write_sync(self, work: Callable[[Connection], T]) -> T:
        assert self._sync_engine is not None
        with self._sync_engine.begin() as conn:
            return work(conn)

    async def write_soon(self, work: Callable[[Connection], T]) -> T:
        """``write`` for the ingest hot path: on SQLite, right here on the event loop when the
        write lock is free, which ``write`` takes again if it is not.

        A writer thread shares the GIL with the loop: while the loop parses requests, each of the
        dozen GIL hand-offs in a transaction waits its turn, so a commit takes several times
        its own work. On the loop, a batch's SQL (no sync to disk, see relay.store.db) simply
        runs (bench/README.md has the figures). WAL checkpoints go to the writer thread.

        While the writer thread has work (the dispatcher's claims and outcomes), the batch joins
        its queue instead: two writers in one process would meet on the file lock, and SQLite's
        busy wait sleeps in steps of milliseconds. Nothing reaches that queue while the loop is
        busy here, so a transaction started on the loop never makes the thread wait.
        """
        if self._inline_engine is None or self._thread_writes:
            return await self.write(work)
        try:
            with self._inline_engine.begin() as conn:
                result = work(conn)
        except OperationalError as exc:
            if getattr(exc.orig, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY:
                raise
            return await self.write(work)  # another connection holds the lock: wait there
        self._inline_commits += 1
        if self._inline_commits >= CHECKPOINT_EVERY and not self._checkpointing:
            self._inline_commits = 0
            self._checkpointing = True
            asyncio.get_running_loop().run_in_executor(self._writer, self._checkpoint)
        return result

    def _checkpoint(self) -> None:
        """Copy committed WAL pages into the database file without blocking any writer."""
        assert self._sync_engine is not None
        try:
            with self._sync_engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        except Exception as exc:  # the next one will try again
            log.warning("WAL checkpoint failed: %s", exc)
        finally:
            self._checkpointing = False

    async def close(self) -> None:
        if self._pg_ingest is not None:
            await self._pg_ingest.close()
        if self._writer is not None:
            self._writer.shutdown(wait=True)
        if self._sync_engine is not None:
            self._sync_engine.dispose()
        if self._inline_engine is not None:
            self._inline_engine.dispose()
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
        keys = [item.key for item in items]
        first: dict[Key, int] = {}
        for n, key in enumerate(keys):
            first.setdefault(key, n)
        candidates = [items[n] for n in first.values()]
        if self._pg_ingest is not None:
            new, known = await self._pg_ingest.record(candidates, now)
        else:
            new, known = await self._record_sqlite(candidates, now)
        return [
            Recorded(known[key], False, len(items[n].connectors))
            if key in new and first[key] == n
            else Recorded(known[key], True, 0)
            for n, key in enumerate(keys)
        ]

    async def _record_sqlite(
        self, items: Sequence[Incoming], now: datetime
    ) -> tuple[dict[Key, int], dict[Key, int]]:
        """Distinct events in one transaction; the ids of those inserted, and of all of them."""
        event_columns = self._bulk_events.prepare([(*event_row(item), now) for item in items])
        # deliveries and phone numbers of every item; the event id is filled in once known,
        # and a duplicate's rows are dropped
        owners: list[Key] = []
        delivery_rows: list[tuple[Any, ...]] = []
        number_owners: list[Key] = []
        number_rows: list[tuple[Any, ...]] = []
        for item in items:
            rows = self.delivery_rows(0, item.event, item.connectors, now)
            delivery_rows += rows
            owners += [item.key] * len(rows)
            number_rows += [(0, number) for number in item.numbers]
            number_owners += [item.key] * len(item.numbers)
        delivery_columns = self._bulk_deliveries.prepare(delivery_rows) if delivery_rows else []
        number_columns = self._bulk_numbers.prepare(number_rows) if number_rows else []

        def write(conn: Connection) -> tuple[dict[Key, int], dict[Key, int]]:
            new = {(r[1], r[2]): int(r[0]) for r in self._bulk_events.run(conn, event_columns)}
            known = dict(new)
            if len(new) < len(items):
                # both columns, so each key is a search of the unique index
                iids, shas = zip(*(item.key for item in items if item.key not in new), strict=True)
                found = conn.execute(
                    select(events.c.id, events.c.integration_id, events.c.body_sha256).where(
                        events.c.integration_id.in_(set(iids)), events.c.body_sha256.in_(shas)
                    )
                )
                known |= {(r[1], r[2]): int(r[0]) for r in found}
            self._bulk_deliveries.run(conn, _owned(delivery_columns, owners, new))
            self._bulk_numbers.run(conn, _owned(number_columns, number_owners, new))
            return new, known

        return await self.write_soon(write)

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

    async def delivery_counts(self) -> dict[tuple[str, str], int]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(deliveries.c.connector, deliveries.c.state, func.count()).group_by(
                    deliveries.c.connector, deliveries.c.state
                )
            )
            return {(r[0], r[1]): int(r[2]) for r in rows}
