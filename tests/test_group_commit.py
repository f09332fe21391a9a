"""Group commit: requests share transactions; nothing is acknowledged that is not stored."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from sqlalchemy import text

from relay.ingest.accept import group_commit
from relay.store.records import Store
from relay.store.rows import Incoming, Recorded, RowRefused
from relay.store.sqlite import CHECKPOINT_EVERY
from relay.wildix import parse
from tests.fakes.receiver import Receiver
from tests.support.relay import make_settings, run_relay
from tests.support.samples import fixture
from tests.support.stores import open_store, refuse_type
from tests.support.waiting import eventually

POISON = "test:poison"


def body(n: int, etype: str = "call:completed") -> bytes:
    data = msgspec.json.decode(fixture("call_completed"))
    data["id"] = data["data"]["id"] = f"call-{n}"
    data["type"] = etype
    return msgspec.json.encode(data)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    async with open_store(db_url) as store:
        yield store


async def count(store: Store, table: str) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


async def test_concurrent_arrivals_share_one_transaction_and_dedupe_exactly(store: Store) -> None:
    writer = group_commit(store)
    items = [Incoming(parse(body(n % 5)), ["a", "b"], "webhook") for n in range(20)]
    results = await asyncio.gather(*(writer.submit(i) for i in items))
    # five distinct bodies, each sent four times, all in one batch
    accepted = [r for r in results if not r.duplicate]
    assert len(accepted) == 5
    assert all(r.deliveries == 2 for r in accepted)
    for n in range(5):
        ids = {results[k].event_id for k in range(n, 20, 5)}
        assert len(ids) == 1  # every copy answered with the stored event's id
    # and across batches: the same bytes again are duplicates of the same rows
    again = await asyncio.gather(*(writer.submit(i) for i in items[:5]))
    assert [r.duplicate for r in again] == [True] * 5
    assert [r.event_id for r in again] == [r.event_id for r in results[:5]]
    assert await count(store, "events") == 5
    assert await count(store, "deliveries") == 10
    await writer.close()


async def test_a_batch_mixing_stored_and_new_bodies_adds_rows_for_the_new_ones_only(
    store: Store,
) -> None:
    stored = await store.record_batch(
        [Incoming(parse(body(n)), ["a", "b"], "webhook") for n in range(3)]
    )
    numbers_per_event = await count(store, "event_numbers") // 3
    assert numbers_per_event >= 1  # the fixture's caller and callee
    mixed = [Incoming(parse(body(n)), ["a", "b"], "webhook") for n in (0, 3, 1, 4, 2, 5)]
    results = await store.record_batch(mixed)
    assert [r.duplicate for r in results] == [True, False, True, False, True, False]
    assert [results[n].event_id for n in (0, 2, 4)] == [r.event_id for r in stored]
    assert await count(store, "events") == 6
    assert await count(store, "deliveries") == 12
    assert await count(store, "event_numbers") == 6 * numbers_per_event
    async with store.engine.connect() as conn:
        owners = (await conn.execute(text("SELECT DISTINCT event_id FROM deliveries"))).all()
    assert {row[0] for row in owners} == {r.event_id for r in stored} | {
        results[n].event_id for n in (1, 3, 5)
    }


def counting(store: Store, commits: list[int]) -> Any:
    """The store's own batch commit, noting the size of every batch it is asked to commit."""

    async def commit(items: Sequence[Incoming]) -> list[Recorded]:
        commits.append(len(items))
        return await store.record_batch(items)

    return commit


async def test_a_refused_row_fails_only_its_own_waiter_and_the_rest_of_its_batch_commits(
    store: Store,
) -> None:
    await refuse_type(store, POISON)
    commits: list[int] = []
    writer = group_commit(store, counting(store, commits))
    items = [Incoming(parse(body(n % 10)), ["a"], "webhook") for n in range(14)]  # 4 copies
    items.insert(5, Incoming(parse(body(99, POISON)), ["a"], "webhook"))
    results = await asyncio.gather(*(writer.submit(i) for i in items), return_exceptions=True)
    assert isinstance(results[5], RowRefused)
    assert str(results[5]).startswith("the store cannot hold this event")
    recorded = [r for n, r in enumerate(results) if n != 5]
    assert all(isinstance(r, Recorded) for r in recorded)
    assert sum(not r.duplicate for r in recorded) == 10  # dedupe holds across the halves
    assert await count(store, "events") == 10
    assert await count(store, "deliveries") == 10
    assert commits[0] == 15 and len(commits) <= 1 + 2 * 4  # halves down to the one to blame
    await writer.close()


async def test_a_store_failure_fails_every_waiter_of_its_batch_at_once(store: Store) -> None:
    """Not a row's fault (the table is gone): one failed commit, every waiter told, no retries
    of parts of the batch against a store that cannot take any of it."""
    async with store.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE deliveries RENAME TO deliveries_away"))
    commits: list[int] = []
    writer = group_commit(store, counting(store, commits))
    items = [Incoming(parse(body(n)), ["a"], "webhook") for n in range(10)]
    results = await asyncio.gather(*(writer.submit(i) for i in items), return_exceptions=True)
    assert all(isinstance(r, Exception) and not isinstance(r, RowRefused) for r in results)
    assert commits == [10]
    assert await count(store, "events") == 0
    async with store.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE deliveries_away RENAME TO deliveries"))
    ok = await writer.submit(items[0])  # the writer survives: the next batch commits
    assert not ok.duplicate and await count(store, "events") == 1
    await writer.close()


async def test_under_200_concurrent_requests_every_200_is_stored_and_only_refused_rows_fail(
    db_url: str,
) -> None:
    async with Receiver() as receiver:
        settings = make_settings(db_url, {"out": {"type": "webhook", "url": receiver.url}})
        async with run_relay(settings, dispatch=False) as relay:
            await refuse_type(relay.store, POISON)
            bodies = [body(n) for n in range(190)]
            bodies += [body(n) for n in range(5)]  # duplicates racing their originals
            bodies += [body(1000 + n, POISON) for n in range(5)]
            responses = await asyncio.gather(*(relay.post(b) for b in bodies))
            stored = {bytes(e.raw) for e in await relay.events()}
            for b, r in zip(bodies, responses, strict=True):
                if b"poison" in b:
                    assert r.status_code != 200 and b not in stored
                else:
                    assert r.status_code == 200 and b in stored
            accepted = [r.json()["event_id"] for r in responses if r.status_code == 200]
            assert len(set(accepted)) == len(stored) == 190


async def test_concurrent_batches_of_the_same_bodies_store_each_once(store: Store) -> None:
    """Two writers racing on the same bodies (two PostgreSQL connections; SQLite's loop and its
    writer thread take turns): one event and one set of deliveries per body, both answered with
    its id, and exactly one of them told it was new."""
    for round_ in range(5):
        batch = [Incoming(parse(body(100 * round_ + n)), ["a", "b"], "webhook") for n in range(20)]
        twin = [Incoming(parse(item.event.raw), ["a", "b"], "webhook") for item in batch]
        one, two = await asyncio.gather(store.record_batch(batch), store.record_batch(twin))
        assert [r.event_id for r in one] == [r.event_id for r in two]
        assert all(a.duplicate != b.duplicate for a, b in zip(one, two, strict=True))
        assert {r.deliveries for r in one + two if not r.duplicate} == {2}
    assert await count(store, "events") == 100
    assert await count(store, "deliveries") == 200


async def test_sqlite_ingest_waits_off_the_event_loop_while_another_writer_holds_the_lock(
    tmp_path: Path,
) -> None:
    """Ingest runs its transaction on the event loop only when the write lock is free at once;
    held by another process (a worker, the CLI), the wait happens on the writer thread."""
    path = tmp_path / "relay.db"
    async with open_store(f"sqlite+aiosqlite:///{path}") as store:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # the write lock, as another process would hold it
        pending = asyncio.create_task(
            store.record_batch([Incoming(parse(body(1)), ["a"], "webhook")])
        )
        await asyncio.sleep(0.2)  # the loop runs on (or this would not return) ...
        assert not pending.done()  # ... while the batch waits for the lock
        other.execute("COMMIT")
        other.close()
        [recorded] = await pending
        assert not recorded.duplicate
        assert await count(store, "events") == 1


async def test_sqlite_wal_is_checkpointed_into_the_database_file(tmp_path: Path) -> None:
    """Ingest's own connection never checkpoints (it would stall the event loop); the writer
    thread does, every CHECKPOINT_EVERY commits, so the WAL does not grow without end."""
    path = tmp_path / "relay.db"
    async with open_store(f"sqlite+aiosqlite:///{path}") as store:
        before = path.stat().st_size
        for n in range(CHECKPOINT_EVERY - 1):
            await store.record_batch([Incoming(parse(body(n)), ["a"], "webhook")])
        await store.write(lambda conn: None)  # the writer thread has nothing queued before this
        assert path.stat().st_size == before  # every page written so far is in the WAL only
        await store.record_batch([Incoming(parse(body(10_000)), ["a"], "webhook")])
        await store.write(lambda conn: None)  # runs after the checkpoint it queued
        assert path.stat().st_size > before
        assert await count(store, "events") == CHECKPOINT_EVERY


@pytest.mark.postgres
async def test_postgres_ingest_survives_the_server_dropping_its_connections(pg_url: str) -> None:
    async with open_store(pg_url) as store:
        await store.record_batch([Incoming(parse(body(1)), ["a"], "webhook")])
        async with store.engine.connect() as conn:
            killed = await conn.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        assert killed >= 1  # the connection ingest holds between batches
        [recorded] = await store.record_batch([Incoming(parse(body(2)), ["a"], "webhook")])
        assert not recorded.duplicate
        assert await count(store, "events") == 2


@pytest.mark.postgres
async def test_postgres_ingest_returns_idle_connections_to_the_pool(pg_url: str) -> None:
    async with open_store(pg_url) as store:
        held = store.backend.held  # type: ignore[attr-defined]
        held.idle = 0.05
        await store.record_batch([Incoming(parse(body(1)), ["a"], "webhook")])
        assert store.engine.pool.checkedout() == 1  # kept for the next batch
        await eventually(
            lambda: store.engine.pool.checkedout() == 0, "the idle connection returned", 10
        )
        await store.record_batch([Incoming(parse(body(2)), ["a"], "webhook")])
        assert await count(store, "events") == 2
