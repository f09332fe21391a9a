"""The dispatcher's pipeline: claims taken ahead of free slots never break a connector's
concurrency bound, and claims that never got a slot go back to the queue unattempted."""

from __future__ import annotations

import asyncio
import logging
import textwrap
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from tests.fakes.receiver import Receiver
from tests.support.relay import call_body, make_settings, run_relay

PROBE = textwrap.dedent(
    '''
    """Reports how many of its deliveries run at once, then holds each a moment."""
    import asyncio

    from relay import Connector, ConnectorConfig, DeliveryContext, Event, hookimpl


    class ProbeConfig(ConnectorConfig):
        url: str
        hold: float = 0.1


    class Probe(Connector):
        type = "probe"
        Config = ProbeConfig
        running = 0

        async def deliver(self, event: Event, ctx: DeliveryContext) -> None:
            Probe.running += 1
            try:
                body = {"running": Probe.running, "delivery": ctx.delivery_id}
                ctx.check_response(await ctx.http.post(self.config.url, json=body), "probe")
                await asyncio.sleep(self.config.hold)
            finally:
                Probe.running -= 1


    @hookimpl
    def register_connectors(register):
        register(Probe)
    '''
)


async def store_backlog(settings: object, count: int) -> None:
    """Events stored with no dispatcher running, so the next one finds a backlog."""
    async with run_relay(settings, dispatch=False) as relay:  # type: ignore[arg-type]
        for n in range(count):
            assert (await relay.post(call_body(f"call-{n}"))).status_code == 200


async def plugin_backlog(
    db_url: str,
    tmp_path: Path,
    name: str,
    source: str,
    receiver: Receiver,
    count: int,
    slots: int = 2,
) -> Any:
    """Settings with the single-file plugin ``name`` (``slots`` at once) sending to
    ``receiver``, and ``count`` events already stored for it."""
    (tmp_path / f"{name}.py").write_text(source)
    block = {"type": name, "url": receiver.url, "delivery": {"concurrency": slots}}
    settings = make_settings(db_url, {"out": block}, plugin_dirs=[str(tmp_path)])
    await store_backlog(settings, count)
    return settings


async def test_claims_taken_ahead_wait_for_a_slot(db_url: str, tmp_path: Path) -> None:
    async with Receiver() as receiver:
        settings = await plugin_backlog(db_url, tmp_path, "probe", PROBE, receiver, 9)
        async with run_relay(settings) as relay:
            rows = await relay.settled()
        assert [r.state for r in rows] == ["succeeded"] * 9
        assert all(r.attempts == 1 for r in rows)
        seen = [r.json() for r in receiver.requests]
        assert sorted(s["delivery"] for s in seen) == sorted(r.id for r in rows)
        assert max(s["running"] for s in seen) == 2  # both slots used, never a third


async def test_stop_releases_claims_that_never_got_a_slot(db_url: str) -> None:
    async with Receiver() as receiver:
        receiver.delay(30)
        block = {
            "type": "webhook",
            "url": receiver.url,
            "delivery": {"concurrency": 2, "timeout": "60s"},
        }
        settings = make_settings(
            db_url, {"slow": block}, extra={"dispatch": {"shutdown_grace": "300ms"}}
        )
        await store_backlog(settings, 3)
        async with run_relay(settings):
            await receiver.wait_for(2)  # both slots busy; the third claim waits for one
        async with run_relay(settings, dispatch=False) as relay:
            rows = await relay.deliveries()
            assert [(r.state, r.attempts, r.leased_by) for r in rows] == [("pending", 0, None)] * 3
            for row in rows:
                assert await relay.attempts(row.id) == []
        assert len(receiver.requests) == 2


async def test_a_claim_that_waited_past_half_its_lease_margin_is_released(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with Receiver() as receiver:
        receiver.delay(1.5)  # the test lease margin is 2 s: a claim may wait 1 s for a slot
        block = {"type": "webhook", "url": receiver.url, "delivery": {"concurrency": 2}}
        settings = make_settings(db_url, {"out": block})
        await store_backlog(settings, 3)
        with caplog.at_level(logging.INFO, logger="relay.connector.out"):
            async with run_relay(settings) as relay:
                rows = await relay.settled(timeout=30)
        assert [(r.state, r.attempts) for r in rows] == [("succeeded", 1)] * 3
        assert len(receiver.requests) == 3  # released, not attempted twice
        released = [r for r in caplog.records if "lease could run out" in r.getMessage()]
        assert released and all(r.levelno == logging.INFO for r in released)


async def test_dispatch_recovers_when_its_held_connections_are_killed(pg_url: str) -> None:
    async with Receiver() as receiver:
        receiver.delay(0.3)
        block = {"type": "webhook", "url": receiver.url, "delivery": {"concurrency": 1}}
        settings = make_settings(pg_url, {"out": block})
        async with run_relay(settings) as relay:
            for n in range(6):
                assert (await relay.post(call_body(f"call-{n}"))).status_code == 200

            async def some_succeeded() -> bool:
                return any(r.state == "succeeded" for r in await relay.deliveries())

            # one delivery recorded, the next in flight: claims and commits hold connections
            await relay.wait_until(some_succeeded, what="a first delivery")
            dsn = make_url(pg_url).set(drivername="postgresql")
            conn = await asyncpg.connect(dsn.render_as_string(hide_password=False))
            try:
                killed = await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            finally:
                await conn.close()
            assert killed >= 2
            rows = await relay.settled(timeout=60)
        assert [r.state for r in rows] == ["succeeded"] * 6
        delivered = {int(r.headers["x-relay-delivery-id"]) for r in receiver.requests}
        assert delivered == {r.id for r in rows}


QUOTA = textwrap.dedent(
    '''
    """Says the account is out of quota for an hour, after telling the receiver it was asked."""
    from relay import Connector, ConnectorConfig, DeliveryContext, Event, PauseConnector, hookimpl


    class QuotaConfig(ConnectorConfig):
        url: str


    class Quota(Connector):
        type = "quota"
        Config = QuotaConfig

        async def deliver(self, event: Event, ctx: DeliveryContext) -> None:
            await ctx.http.post(self.config.url, json={"delivery": ctx.delivery_id})
            raise PauseConnector("out of quota", 3600, status_code=429)


    @hookimpl
    def register_connectors(register):
        register(Quota)
    '''
)


async def test_claims_waiting_for_a_slot_are_not_attempted_once_paused(
    db_url: str, tmp_path: Path
) -> None:
    async with Receiver() as receiver:
        settings = await plugin_backlog(db_url, tmp_path, "quota", QUOTA, receiver, 3)
        async with run_relay(settings) as relay:

            async def none_running() -> list[Any] | None:
                rows = await relay.deliveries()
                return rows if all(r.state == "pending" for r in rows) else None

            await receiver.wait_for(2)
            rows = await relay.wait_until(none_running, what="the claims to come back")
            history = [[a.outcome for a in await relay.attempts(r.id)] for r in rows]
        assert sorted(history) == [[], ["paused"], ["paused"]]
        assert [(r.attempts, r.leased_by) for r in rows] == [(0, None)] * 3
        assert len(receiver.requests) == 2  # the third never reached the paused account


async def test_a_pause_whose_commit_is_held_up_survives_the_reread_of_stored_pauses(
    pg_url: str, tmp_path: Path
) -> None:
    """Stored pauses are re-read every poll interval; a pause this process's own attempt just
    asked for, not yet committed, must still hold the connector's other deliveries back."""
    async with Receiver() as receiver:
        settings = await plugin_backlog(pg_url, tmp_path, "quota", QUOTA, receiver, 3, slots=1)
        dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
        blocker = await asyncpg.connect(dsn)
        try:
            held = blocker.transaction()
            await held.start()
            await blocker.execute("LOCK TABLE attempts IN SHARE MODE")  # reads go, inserts wait
            async with run_relay(settings) as relay:
                try:
                    await receiver.wait_for(1)
                    # Ten poll intervals, each re-reading stored pauses that lack this one.
                    await asyncio.sleep(10 * settings.dispatch.poll_interval)
                    while_held = len(receiver.requests)
                finally:
                    await held.rollback()  # the outcome commits: the pause is stored now
                assert while_held == 1

                async def recorded() -> list[Any] | None:
                    rows = await relay.deliveries()
                    attempts = [await relay.attempts(r.id) for r in rows]
                    done = all(r.state == "pending" for r in rows) and sum(map(len, attempts))
                    return attempts if done else None

                attempts = await relay.wait_until(recorded, what="the paused attempt recorded")
        finally:
            await blocker.close()
    assert sorted(len(a) for a in attempts) == [0, 0, 1]  # the other two were never attempted
    assert len(receiver.requests) == 1


async def test_an_attempt_past_its_delivery_timeout_is_cut_off_and_retried(db_url: str) -> None:
    async with Receiver() as receiver:
        receiver.delay(30)  # longer than the delivery timeout, shorter than the webhook's own
        block = {
            "type": "webhook",
            "url": receiver.url,
            "timeout": 60,
            "delivery": {"timeout": "3s"},
        }
        async with run_relay(make_settings(db_url, {"out": block})) as relay:
            await relay.post(call_body("call-slow"))
            await receiver.wait_for(1)
            receiver.delay(0)
            [row] = await relay.settled(timeout=30)
            tries = await relay.attempts(row.id)
        assert (row.state, row.attempts) == ("succeeded", 2)
        assert [(a.outcome, a.error) for a in tries] == [
            ("retry", "timed out after 3s"),
            ("succeeded", None),
        ]
