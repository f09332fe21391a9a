"""Delivery semantics against a real loopback receiver: retries, Retry-After, dead letters,
per-call ordering, lease recovery after a crash, and exactly-once across two workers."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from tests.fakes.receiver import Receiver
from tests.support.relay import (
    call_body,
    config_dict,
    make_settings,
    run_relay,
    start_worker,
    write_config,
)
from tests.support.samples import fixture
from tests.support.workers import dispatching_workers


def webhook_to(receiver: Receiver, **extra: object) -> dict[str, dict[str, object]]:
    return {"out": {"type": "webhook", "url": receiver.url, **extra}}


async def test_500_twice_then_200_is_three_attempts_and_one_delivery(db_url: str) -> None:
    async with Receiver() as receiver:
        receiver.respond(500, body="boom", times=2)
        async with run_relay(make_settings(db_url, webhook_to(receiver))) as relay:
            assert (await relay.post(fixture("call_completed"))).status_code == 200
            [delivery] = await relay.settled()
            assert delivery.state == "succeeded"
            assert delivery.attempts == 3
            tries = await relay.attempts(delivery.id)
            assert [(a.outcome, a.status_code) for a in tries] == [
                ("retry", 500),
                ("retry", 500),
                ("succeeded", 200),
            ]
            assert "HTTP 500" in tries[0].error
            assert len(receiver.requests) == 3


async def test_429_retry_after_is_honoured(db_url: str) -> None:
    async with Receiver() as receiver:
        receiver.respond(429, headers={"retry-after": "2"})
        async with run_relay(make_settings(db_url, webhook_to(receiver))) as relay:
            await relay.post(fixture("call_completed"))
            [delivery] = await relay.settled()
            assert delivery.state == "succeeded"
            first, second = receiver.requests
            # the schedule says 0.2 s; the receiver said 2 s, and the later one wins
            assert second.at - first.at >= 1.9


async def test_400_is_dead_after_one_attempt(db_url: str) -> None:
    async with Receiver() as receiver:
        receiver.respond(400, body='{"error": "bad field"}')
        async with run_relay(make_settings(db_url, webhook_to(receiver))) as relay:
            await relay.post(fixture("call_completed"))
            [delivery] = await relay.settled()
            assert delivery.state == "dead"
            assert delivery.attempts == 1
            assert "HTTP 400" in delivery.last_error and "bad field" in delivery.last_error
            await asyncio.sleep(0.5)
            assert len(receiver.requests) == 1


async def test_gives_up_after_max_attempts(db_url: str) -> None:
    async with Receiver() as receiver:
        receiver.respond(503, times=100)
        settings = make_settings(db_url, webhook_to(receiver, delivery={"max_attempts": 3}))
        async with run_relay(settings) as relay:
            await relay.post(fixture("call_completed"))
            [delivery] = await relay.settled()
            assert delivery.state == "dead"
            assert delivery.attempts == 3
            assert delivery.last_error.startswith("gave up after 3 attempts")
            assert len(receiver.requests) == 3


async def test_a_retrying_start_holds_back_its_own_call_only(db_url: str) -> None:
    async with Receiver() as receiver:
        receiver.respond(500)
        settings = make_settings(db_url, webhook_to(receiver, delivery={"schedule": ["5s"]}))
        async with run_relay(settings) as relay:
            start_a = call_body("call-a", "call_live_progress_start")
            end_a = call_body("call-a", "call_live_completed")
            other = call_body("call-b", "call_completed")
            await relay.post(start_a)
            await receiver.wait_for(1)  # start of call A failed and waits 5 s for its retry
            await relay.post(end_a)
            await relay.post(other)
            await relay.settled(timeout=30)
            order = [r.body for r in receiver.requests]
            assert order == [start_a, other, start_a, end_a]


async def test_killed_worker_claim_is_picked_up_after_the_lease(
    db_url: str, tmp_path: Path
) -> None:
    async with Receiver() as receiver:
        data = config_dict(db_url, webhook_to(receiver, delivery={"timeout": "3s"}))
        data["dispatch"]["lease"] = "1s"
        async with run_relay(make_settings(db_url, webhook_to(receiver)), dispatch=False) as relay:
            await relay.post(fixture("call_completed"))
        receiver.delay(30)  # the first worker hangs in the middle of the delivery...
        worker = start_worker(write_config(tmp_path / "relay.yaml", data))
        try:
            await receiver.wait_for(1, timeout=30)
        finally:
            worker.send_signal(signal.SIGKILL)  # ...and dies without a word
            worker.wait()
        receiver.delay(0)
        settings = make_settings(db_url, webhook_to(receiver))
        async with run_relay(settings, dispatch=False) as relay:  # looked at, not dispatched
            [claimed] = await relay.deliveries()
        assert claimed.state == "running" and claimed.leased_by  # still the dead worker's claim
        # the dead worker's lease (3 s timeout + 1 s margin) must run out before anyone retries
        async with run_relay(settings) as relay:
            [delivery] = await relay.settled(timeout=90)
            assert delivery.state == "succeeded"
            assert delivery.attempts == 2
            tries = await relay.attempts(delivery.id)
            assert [a.outcome for a in tries] == ["succeeded"]  # the dead worker recorded nothing
            assert tries[0].started_at > claimed.lease_until  # taken over once the lease ran out
        assert len(receiver.requests) == 2


async def test_two_workers_deliver_every_delivery_exactly_once(pg_url: str, tmp_path: Path) -> None:
    async with Receiver() as receiver:
        connectors = webhook_to(receiver)
        settings = make_settings(pg_url, connectors)
        receiver.delay(0.02)
        async with run_relay(settings, dispatch=False) as relay:
            config = write_config(tmp_path / "relay.yaml", config_dict(pg_url, connectors))
            async with dispatching_workers(config, 2):  # both claiming before the burst
                for i in range(120):
                    assert (await relay.post(call_body(f"call-{i}"))).status_code == 200
                rows = await relay.settled(timeout=60)
            assert len(rows) == 120 and all(r.state == "succeeded" for r in rows)
            assert all(r.attempts == 1 for r in rows)
            ids = [r.headers["x-relay-delivery-id"] for r in receiver.requests]
            assert len(ids) == 120 and len(set(ids)) == 120
            workers_used = {a.worker for r in rows for a in await relay.attempts(r.id)}
            assert len(workers_used) == 2


async def test_shutdown_finishes_short_work_and_releases_the_rest(db_url: str) -> None:
    async with Receiver() as fast, Receiver() as slow:
        fast.delay(0.5)
        slow.delay(30)
        settings = make_settings(
            db_url,
            {
                "fast": {"type": "webhook", "url": fast.url},
                "slow": {"type": "webhook", "url": slow.url, "delivery": {"timeout": "60s"}},
            },
            extra={"dispatch": {"poll_interval": "0.1s", "shutdown_grace": "5s"}},
        )
        async with run_relay(settings) as relay:
            await relay.post(fixture("call_completed"))
            await fast.wait_for(1)
            await slow.wait_for(1)
        # stopped: the fast delivery finished within the grace period, the slow one was released
        async with run_relay(settings, dispatch=False) as relay:
            rows = {r.connector: r for r in await relay.deliveries()}
            assert rows["fast"].state == "succeeded"
            assert rows["slow"].state == "pending"
            assert rows["slow"].attempts == 0  # an interrupted try is not a failed attempt
            assert rows["slow"].leased_by is None
            assert await relay.attempts(rows["slow"].id) == []
