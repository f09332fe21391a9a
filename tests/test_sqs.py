"""The SQS source end to end: moto's SQS server on loopback, the real app, the real store."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from relay.store.tables import links, rejections, utcnow
from tests.fakes.receiver import Receiver
from tests.fakes.sqs import SECRET_KEY, MotoSqs, Queue, SqsProxy
from tests.support.relay import RunningRelay, run_relay
from tests.support.samples import CURRENT, LEGACY, fixture
from tests.support.sqs import consumer, consumer_when, readyz, sqs_settings, until


@contextlib.asynccontextmanager
async def consuming_one_queue(
    db_url: str, moto_sqs: MotoSqs
) -> AsyncIterator[tuple[RunningRelay, Queue]]:
    """A relay (no dispatcher) consuming a fresh queue for q7m2xk, routed to the log connector."""
    queue = moto_sqs.queue()
    settings = sqs_settings(db_url, {"log": {"type": "log"}}, {"q7m2xk": queue})
    async with run_relay(settings, dispatch=False) as relay:
        yield relay, queue


async def test_signed_fixtures_of_both_generations_are_stored_delivered_and_the_queue_empties(
    db_url: str, moto_sqs: MotoSqs
) -> None:
    current, legacy = moto_sqs.queue(), moto_sqs.queue()
    async with Receiver() as receiver:
        settings = sqs_settings(
            db_url,
            {"out": {"type": "webhook", "url": receiver.url}},
            {"q7m2xk": current, "h3p9ta": legacy},
        )
        async with run_relay(settings) as relay:
            sent = {current.send(fixture(name)): name for name in CURRENT}
            sent |= {legacy.send(fixture(name)): name for name in LEGACY}

            async def all_stored() -> list[Any] | None:
                rows = await relay.events()
                return rows if len(rows) == len(sent) else None

            rows = await relay.wait_until(all_stored, what="every message stored")
            for row in rows:
                name = sent[row.transport_meta["message_id"]]
                assert bytes(row.raw) == fixture(name)
                assert row.body_sha256 == hashlib.sha256(fixture(name)).hexdigest()
                assert row.transport == "sqs"
                assert row.transport_meta["receive_count"] == 1
            assert {r.integration_id for r in rows} == {"q7m2xk", "h3p9ta"}

            settled = await relay.settled()
            assert len(settled) == len(sent) and all(d.state == "succeeded" for d in settled)
            got = await receiver.wait_for(len(sent))
            assert sorted(r.body for r in got) == sorted(fixture(n) for n in sent.values())
            await until(relay, lambda: current.is_empty() and legacy.is_empty(), "empty queues")

            assert (await readyz(relay))[0] == 200
            for iid, count in (("q7m2xk", len(CURRENT)), ("h3p9ta", len(LEGACY))):
                status = await consumer_when(
                    relay, lambda s, n=count: s["deleted"] == n, f"{iid}'s deletes", iid
                )
                assert status["state"] == "running"
                assert status["received"] == status["stored"] == status["deleted"] == count
                assert status["rejected"] == status["duplicates"] == 0


async def test_the_same_body_twice_is_one_event_and_both_messages_go(
    db_url: str, moto_sqs: MotoSqs
) -> None:
    queue = moto_sqs.queue()
    async with Receiver() as receiver:
        settings = sqs_settings(
            db_url, {"out": {"type": "webhook", "url": receiver.url}}, {"q7m2xk": queue}
        )
        async with run_relay(settings) as relay:
            body = fixture("call_completed")
            queue.send(body)
            queue.send(body)
            await until(relay, queue.is_empty, "both messages deleted")
            assert len(await relay.events()) == 1
            assert len(await relay.deliveries()) == 1
            status = await consumer_when(relay, lambda s: s["deleted"] == 2, "both deletes")
            assert (status["stored"], status["duplicates"]) == (1, 1)
            await relay.settled()
            assert [r.body for r in receiver.requests] == [body]


@pytest.mark.parametrize("on_invalid", ["delete", "keep"])
async def test_invalid_messages_are_recorded_never_routed_and_follow_on_invalid(
    db_url: str, moto_sqs: MotoSqs, on_invalid: str, caplog: pytest.LogCaptureFixture
) -> None:
    queue = moto_sqs.queue()
    good = fixture("call_completed")
    deep = good.rstrip()[:-1] + b', "pad": ' + b"[" * 1100 + b"]" * 1100 + b"}"
    cases = {
        queue.send(good, secret="not-the-aws-secret-key"): (good, "bad signature"),
        # signed, but nested deeper than the decoder follows: refused alone, not its batch
        queue.send(deep): (deep, "nested too deeply"),
        queue.send(good, secret=None): (good, "missing X-SIGNATURE"),
        queue.send(b"this is not json"): (b"this is not json", "not JSON"),
        # signed correctly, but for another integration than the one this queue belongs to
        queue.send(fixture("legacy_call_end")): (fixture("legacy_call_end"), "integration"),
    }
    async with Receiver() as receiver:
        settings = sqs_settings(
            db_url,
            {"out": {"type": "webhook", "url": receiver.url}},
            {"q7m2xk": queue},
            on_invalid=on_invalid,
        )
        async with run_relay(settings) as relay:

            async def rejected(receive_count: int) -> list[Any] | None:
                rows = await relay.rows(rejections)
                seen = [r for r in rows if r.transport_meta["receive_count"] == receive_count]
                return rows if len(seen) == len(cases) else None

            rows = await relay.wait_until(lambda: rejected(1), what="every message rejected")
            first = {r.transport_meta["message_id"]: r for r in rows}
            for message_id, (body, reason) in cases.items():
                row = first[message_id]
                assert reason.lower() in row.reason.lower(), row.reason
                assert row.transport == "sqs" and row.integration_id == "q7m2xk"
                assert bytes(row.body_excerpt) == body
                assert row.transport_meta["on_invalid"] == on_invalid

            if on_invalid == "delete":
                await until(relay, queue.is_empty, "rejected messages deleted")
                status = await consumer_when(relay, lambda s: s["deleted"] == 5, "the deletes")
                assert (status["rejected"], status["kept"]) == (5, 0)
            else:  # left for the queue's redrive policy: they come back and are refused again
                await relay.wait_until(lambda: rejected(2), what="rejected messages redelivered")
                assert sum(queue.counts()) == len(cases)
                status = await consumer_when(relay, lambda s: s["kept"] >= 10, "kept twice each")
                assert status["deleted"] == 0

            assert await relay.events() == []
            assert await relay.deliveries() == []
            assert receiver.requests == []
    assert SECRET_KEY not in caplog.text


async def test_store_failure_deletes_nothing_and_the_messages_return_once_it_recovers(
    db_url: str, moto_sqs: MotoSqs
) -> None:
    async with consuming_one_queue(db_url, moto_sqs) as (relay, queue):
        async with relay.store.engine.begin() as conn:
            await conn.execute(text("ALTER TABLE deliveries RENAME TO deliveries_away"))
        bodies = [fixture(n) for n in ("call_completed", "call_live_completed", "presence_user")]
        queue.send_many(bodies)  # visible together: one batch, which fails as a whole

        async def backing_off() -> dict[str, Any] | None:
            status = await consumer(relay)
            return status if status["state"] == "backing_off" else None

        status = await relay.wait_until(backing_off, what="the consumer to back off")
        assert "deliveries" in status["last_error"]
        assert (await readyz(relay))[0] == 200  # the database answers: ingest is still possible
        assert await relay.events() == []
        assert sum(queue.counts()) == len(bodies)  # nothing was deleted
        assert status["deleted"] == 0

        async with relay.store.engine.begin() as conn:
            await conn.execute(text("ALTER TABLE deliveries_away RENAME TO deliveries"))

        async def stored() -> list[Any] | None:
            rows = await relay.events()
            return rows if len(rows) == len(bodies) else None

        rows = await relay.wait_until(stored, what="the returned messages stored")
        assert sorted(bytes(r.raw) for r in rows) == sorted(bodies)
        assert all(r.transport_meta["receive_count"] >= 2 for r in rows)  # they came back
        assert len(await relay.deliveries()) == len(bodies)
        await until(relay, queue.is_empty, "the queue to empty")
        status = await consumer_when(relay, lambda s: s["deleted"] == len(bodies), "the deletes")
        assert status["state"] == "running"


@contextlib.asynccontextmanager
async def store_writes_blocked(engine: AsyncEngine) -> AsyncIterator[None]:
    """Another session holds the write lock that recording an event needs."""
    async with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            await conn.execute(text("LOCK TABLE events IN EXCLUSIVE MODE"))
        else:  # SQLite has one writer: an open write transaction blocks every other
            row = {"connector": "x", "key": "lock", "value": {}, "updated_at": utcnow()}
            await conn.execute(insert(links).values(**row))
        yield
        await conn.rollback()


async def test_a_slow_batch_stays_invisible_until_it_is_committed(
    db_url: str, moto_sqs: MotoSqs
) -> None:
    async with consuming_one_queue(db_url, moto_sqs) as (relay, queue):
        async with store_writes_blocked(relay.store.engine):
            queue.send(fixture("call_completed"))
            await relay.wait_until(
                lambda: _received(relay, 1), what="the consumer to receive the message"
            )
            # Well past the 2 s visibility timeout, nobody else can see the message.
            for _ in range(14):
                assert queue.take() == []
                await asyncio.sleep(0.25)
            assert await relay.events() == []
        await until(relay, queue.is_empty, "the committed message deleted")
        [row] = await relay.events()
        assert row.transport_meta["receive_count"] == 1  # never redelivered
        status = await consumer_when(relay, lambda s: s["deleted"] == 1, "the delete")
        assert (status["received"], status["stored"]) == (1, 1)


async def _received(relay: RunningRelay, n: int) -> bool:
    return (await consumer(relay))["received"] >= n


async def test_stop_finishes_the_in_flight_batch_and_deletes_it(
    db_url: str, moto_sqs: MotoSqs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay.sqs")
    queue = moto_sqs.queue()
    async with SqsProxy(moto_sqs.endpoint) as proxy:
        grace = {"poll_interval": "0.1s", "lease": "2s", "shutdown_grace": "20s"}
        settings = sqs_settings(
            db_url,
            {"log": {"type": "log"}},
            {"q7m2xk": queue},
            endpoint=proxy.url,
            extra={"dispatch": grace},
        )
        proxy.hold_deletes()
        running = run_relay(settings)
        relay = await running.__aenter__()
        stopping: asyncio.Task[Any] | None = None
        try:
            queue.send(fixture("call_completed"))
            await until(relay, lambda: proxy.held == 1, "the delete to be under way")
            assert len(await relay.events()) == 1  # committed, not yet deleted
            stopping = asyncio.create_task(running.__aexit__(None, None, None))

            async def consumer_stopping() -> bool:
                return any(r.getMessage() == "sqs consumer stopping" for r in caplog.records)

            await relay.wait_until(consumer_stopping, what="the consumer to be told to stop")
            assert not stopping.done()  # shutdown waits for the batch
            proxy.release_deletes()
            await stopping
        finally:
            proxy.release_deletes()
            if stopping is None:
                await running.__aexit__(None, None, None)
        assert queue.is_empty()
        status = relay.app.state.sqs.snapshot()["q7m2xk"]
        assert status["state"] == "stopped" and status["deleted"] == 1
        assert proxy.operations.count("ReceiveMessage") >= 1


async def test_an_unreachable_queue_is_a_clear_error_retried_until_it_exists(
    tmp_path: Any, moto_sqs: MotoSqs, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"wildix-later-{tmp_path.name[-8:]}"
    missing = Queue(moto_sqs, f"{moto_sqs.endpoint}/123456789012/{name}")
    settings = sqs_settings(
        f"sqlite+aiosqlite:///{tmp_path}/relay.db", {"log": {"type": "log"}}, {"q7m2xk": missing}
    )
    async with run_relay(settings) as relay:

        async def failing() -> dict[str, Any] | None:
            status = await consumer(relay)
            return status if status["state"] == "error" else None

        status = await relay.wait_until(failing, what="the consumer to report the error")
        assert (
            "NonExistentQueue" in status["last_error"]
            or "QueueDoesNotExist" in status["last_error"]
        )
        code, body = await readyz(relay)
        assert code == 200 and body["status"] == "ok"  # a queue problem is not a process problem
        logged = [r for r in caplog.records if r.name == "relay.sqs" and r.levelname == "ERROR"]
        assert logged and all(getattr(r, "integration", None) == "q7m2xk" for r in logged)
        assert "q7m2xk" in logged[0].getMessage()

        created = moto_sqs.client.create_queue(QueueName=name)["QueueUrl"]
        assert created == missing.url
        missing.send(fixture("call_completed"))
        await until(relay, missing.is_empty, "the queue to be consumed once it exists")
        status = await consumer_when(relay, lambda s: s["deleted"] == 1, "the delete")
        assert status["state"] == "running" and status["stored"] == 1
        assert len(await relay.events()) == 1
    assert SECRET_KEY not in caplog.text


async def test_a_refused_connection_says_so_and_names_the_queue_url(
    tmp_path: Any, moto_sqs: MotoSqs
) -> None:
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
        queue = Queue(moto_sqs, f"{endpoint}/123456789012/wildix-events")
        settings = sqs_settings(
            f"sqlite+aiosqlite:///{tmp_path}/relay.db",
            {"log": {"type": "log"}},
            {"q7m2xk": queue},
            endpoint=endpoint,
        )
        async with run_relay(settings) as relay:

            async def failing() -> dict[str, Any] | None:
                status = await consumer(relay)
                return status if status["state"] == "error" else None

            status = await relay.wait_until(failing, what="the consumer to report the error")
    assert status["last_error"] == f"cannot connect to {queue.url}: connection refused"
