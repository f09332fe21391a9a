"""What each database behind the store implements: relay.store.sqlite and relay.store.postgres.

``Store`` picks one backend from the engine's dialect, once, and delegates to it the writes
that differ between databases: ingest, claims, outcomes, and the transactions everything else
runs in. Whatever the rest of relay must know about a database (how ingest batches its commits)
is an attribute here, never a comparison of dialect names outside the two backend modules.
Admin queries and inspection keep using ``Store.engine`` (SQLAlchemy Core, portable).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from sqlalchemy import Table
from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import Insert

from relay.store.queue import Claim, Outcome, QueueSession
from relay.store.rows import Incoming, Key

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class IngestShape:
    """How group commit (relay.ingest.group_commit) feeds this database: how many batches are
    in flight at once, and how many events a batch holds at most."""

    concurrency: int
    max_batch: int


@runtime_checkable
class SharedBuckets(Protocol):
    """A backend that keeps rate limits in the database, for every process of the cluster
    (PostgreSQL). One without (SQLite: one process) leaves them in memory."""

    async def take_token(self, connector: str, bucket: str, interval: float, burst: int) -> float:
        """One token of a bucket whose tokens come every ``interval`` seconds, at most ``burst``
        at once; the seconds the caller waits before using it."""
        ...


class Backend(Protocol):
    dialect: ClassVar[str]  # the SQLAlchemy dialect name this backend serves
    ingest: ClassVar[IngestShape]

    @staticmethod
    def insert(table: Table) -> Insert:
        """An INSERT that can take this database's ``on_conflict_do_update``."""
        ...

    async def write(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in one write transaction (committed when it returns)."""
        ...

    async def record_events(
        self, items: Sequence[Incoming], now: datetime
    ) -> tuple[dict[Key, int], dict[Key, int]]:
        """Store distinct events with their deliveries and phone numbers in one transaction;
        the ids of those inserted, and the ids of all of them."""
        ...

    async def add_deliveries(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Deliveries (``rows.delivery_rows``) of events already stored, in one transaction."""
        ...

    async def claim(
        self, connector: str, limit: int, *, worker: str, lease: float, coalesce: bool = False
    ) -> list[Claim]:
        """Lease up to ``limit`` due deliveries (see ``DeliveryQueue.claim``)."""
        ...

    async def finish_batch(self, done: Sequence[tuple[Claim, Outcome]], *, worker: str) -> int:
        """Record attempts, pauses, and move deliveries on (see ``DeliveryQueue.finish_batch``)."""
        ...

    def session(self) -> AbstractAsyncContextManager[QueueSession]:
        """``claim`` and ``finish_batch`` for a run of calls (see ``DeliveryQueue.session``)."""
        ...

    async def close(self) -> None: ...
