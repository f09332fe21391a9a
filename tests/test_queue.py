"""The delivery queue on its own, on SQLite and PostgreSQL: what a claim hands out and in which
order, what finishing an attempt writes, and what a worker whose lease was taken over may not
write. The statements are plain driver SQL, so every value is read back through SQLAlchemy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from sqlalchemy import select

from relay.store import db
from relay.store.queue import Outcome
from relay.store.records import Store
from relay.store.rows import Incoming
from relay.store.tables import attempts, connector_state, deliveries
from relay.wildix import parse
from tests.support.samples import fixture

LEASE = 30.0


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    engine = db.create_engine(db_url)
    if db.is_sqlite(db_url):  # the PostgreSQL fixture database is migrated already
        await db.migrate(engine)
    store = Store(engine)
    yield store
    await store.close()


def event_body(call_id: str, name: str = "call_completed") -> bytes:
    body = msgspec.json.decode(fixture(name))
    body["id"] = body["data"]["id"] = call_id
    return msgspec.json.encode(body)


async def record(store: Store, *bodies: bytes, connectors: tuple[str, ...] = ("out",)) -> None:
    await store.record_batch([Incoming(parse(b), list(connectors), "test") for b in bodies])


async def rows(store: Store, table: Any, *where: Any) -> list[Any]:
    async with store.engine.connect() as conn:
        return list((await conn.execute(select(table).where(*where).order_by(table.c.id))).all())


def at(seconds: float) -> datetime:
    """A whole-microsecond UTC time relative to now, as both databases keep it."""
    return (datetime.now(UTC) + timedelta(seconds=seconds)).replace(microsecond=123456)


def succeeded() -> Outcome:
    return Outcome("succeeded", "succeeded", at(-1), 12, status_code=200)


def retry(next_at: datetime, error: str = "HTTP 503") -> Outcome:
    return Outcome("pending", "retry", at(-1), 40, next_at, status_code=503, error=error)


async def test_a_claim_leases_due_rows_in_order_with_their_bodies(store: Store) -> None:
    bodies = [event_body(f"call-{n}") for n in range(3)]
    await record(store, *bodies)
    claims = await store.claim("out", 2, worker="w1", lease=LEASE)
    assert [c.raw for c in claims] == bodies[:2]
    assert [c.attempt for c in claims] == [1, 1]
    assert all(c.connector == "out" and c.integration_id for c in claims)
    [first, second, third] = await rows(store, deliveries)
    assert [c.delivery_id for c in claims] == [first.id, second.id]
    assert (first.state, first.leased_by, first.attempts) == ("running", "w1", 1)
    assert first.lease_until > datetime.now(UTC) + timedelta(seconds=LEASE - 5)
    assert (third.state, third.leased_by, third.attempts) == ("pending", None, 0)
    assert [c.delivery_id for c in await store.claim("out", 5, worker="w2", lease=LEASE)] == [
        third.id
    ]
    assert await store.claim("out", 5, worker="w2", lease=LEASE) == []


async def test_a_later_delivery_of_the_same_call_waits_for_the_earlier(store: Store) -> None:
    start = event_body("call-a", "call_live_progress_start")
    end = event_body("call-a", "call_live_completed")
    other = event_body("call-b")
    await record(store, start, end, other)
    claims = await store.claim("out", 10, worker="w1", lease=LEASE)
    assert [c.raw for c in claims] == [start, other]
    assert await store.claim("out", 10, worker="w1", lease=LEASE) == []
    # a retry keeps the call's place: the end still waits
    await store.finish(claims[0], retry(at(-5)), worker="w1")
    [again] = await store.claim("out", 10, worker="w1", lease=LEASE)
    assert (again.raw, again.attempt) == (start, 2)
    assert await store.finish(again, succeeded(), worker="w1")
    [last] = await store.claim("out", 10, worker="w1", lease=LEASE)
    assert last.raw == end


async def test_other_connectors_deliveries_are_not_claimed(store: Store) -> None:
    await record(store, event_body("call-a"), connectors=("out", "crm"))
    [claim] = await store.claim("crm", 10, worker="w1", lease=LEASE)
    assert claim.connector == "crm"
    [mine] = await rows(store, deliveries, deliveries.c.connector == "crm")
    assert claim.delivery_id == mine.id
    [theirs] = await rows(store, deliveries, deliveries.c.connector == "out")
    assert theirs.state == "pending"


async def test_expired_leases_come_first_and_their_old_holder_moves_nothing(store: Store) -> None:
    await record(store, event_body("call-a"), event_body("call-b"))
    # w1 claims both with a lease that has already run out, then retries the first at once:
    # the first is due and pending, the second is running under an expired lease
    first, second = await store.claim("out", 2, worker="w1", lease=-60)
    assert await store.finish(first, retry(at(-5)), worker="w1")
    [taken] = await store.claim("out", 1, worker="w2", lease=LEASE)
    assert (taken.delivery_id, taken.attempt) == (second.delivery_id, 2)

    assert not await store.finish(second, succeeded(), worker="w1")  # w1 lost its lease
    [row] = await rows(store, deliveries, deliveries.c.id == second.delivery_id)
    assert (row.state, row.leased_by, row.attempts) == ("running", "w2", 2)
    assert await store.finish(taken, succeeded(), worker="w2")
    [row] = await rows(store, deliveries, deliveries.c.id == second.delivery_id)
    assert (row.state, row.leased_by, row.lease_until) == ("succeeded", None, None)
    history = await rows(store, attempts, attempts.c.delivery_id == second.delivery_id)
    assert [(a.number, a.worker) for a in history] == [(1, "w1"), (2, "w2")]  # both attempts


async def test_finishing_a_batch_writes_each_outcome_and_its_attempt(store: Store) -> None:
    await record(store, *(event_body(f"call-{n}") for n in range(3)))
    a, b, c = await store.claim("out", 3, worker="w1", lease=LEASE)
    next_at = at(90)
    dead = Outcome("dead", "dead", at(-2), 7, status_code=400, error="HTTP 400 bad field")
    moved = await store.finish_batch(
        [(a, succeeded()), (b, retry(next_at, "HTTP 503 try later")), (c, dead)], worker="w1"
    )
    assert moved == 3
    ra, rb, rc = await rows(store, deliveries)
    assert (ra.state, ra.attempts, ra.last_error, ra.lease_until) == ("succeeded", 1, None, None)
    assert ra.completed_at is not None and ra.completed_at.tzinfo is not None
    assert (rb.state, rb.attempts, rb.last_error, rb.completed_at) == (
        "pending",
        1,
        "HTTP 503 try later",
        None,
    )
    assert rb.next_attempt_at == next_at
    assert (rc.state, rc.last_error) == ("dead", "HTTP 400 bad field")
    assert rc.completed_at is not None
    history = await rows(store, attempts)
    assert [(h.delivery_id, h.number, h.outcome, h.status_code, h.error) for h in history] == [
        (a.delivery_id, 1, "succeeded", 200, None),
        (b.delivery_id, 1, "retry", 503, "HTTP 503 try later"),
        (c.delivery_id, 1, "dead", 400, "HTTP 400 bad field"),
    ]
    assert history[2].started_at == dead.started_at and history[2].duration_ms == 7
    assert {h.worker for h in history} == {"w1"}
    # the retry is not due for 90 s, so nothing is claimable
    assert await store.claim("out", 3, worker="w1", lease=LEASE) == []


async def test_a_pause_refunds_the_attempt_and_holds_the_connector(store: Store) -> None:
    await record(store, event_body("call-a"))
    [claim] = await store.claim("out", 1, worker="w1", lease=LEASE)
    until = at(3600)
    paused = Outcome(
        "pending", "paused", at(-1), 5, until, status_code=429, error="quota", pause_until=until
    )
    assert await store.finish(claim, paused, worker="w1")
    [row] = await rows(store, deliveries)
    assert (row.state, row.attempts, row.next_attempt_at) == ("pending", 0, until)
    [state] = await rows_by_connector(store)
    assert (state.paused_until, state.pause_reason) == (until, "quota")
    assert await store.paused_connectors() == {"out": until}
    [attempt] = await rows(store, attempts)
    assert (attempt.outcome, attempt.number) == ("paused", 1)
    # a later pause of the same connector replaces the first
    await record(store, event_body("call-b"))
    [other] = await store.claim("out", 1, worker="w1", lease=LEASE)
    assert other.delivery_id != claim.delivery_id
    later = at(7200)
    paused_again = Outcome("pending", "paused", at(-1), 5, later, error="q2", pause_until=later)
    assert await store.finish_batch([(other, paused_again)], worker="w1") == 1
    assert await store.paused_connectors() == {"out": later}


async def rows_by_connector(store: Store) -> list[Any]:
    async with store.engine.connect() as conn:
        return list((await conn.execute(select(connector_state))).all())


async def test_release_hands_claims_back_without_counting_an_attempt(store: Store) -> None:
    await record(store, event_body("call-a"), event_body("call-b"))
    a, b = await store.claim("out", 2, worker="w1", lease=LEASE)
    assert await store.release([a.delivery_id, b.delivery_id], worker="w2") == 0  # not w2's
    assert await store.release([a.delivery_id], worker="w1") == 1
    ra, rb = await rows(store, deliveries)
    assert (ra.state, ra.attempts, ra.leased_by) == ("pending", 0, None)
    assert (rb.state, rb.attempts) == ("running", 1)
    [again] = await store.claim("out", 2, worker="w1", lease=LEASE)
    assert (again.delivery_id, again.attempt) == (a.delivery_id, 1)
