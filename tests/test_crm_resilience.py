"""CRM delivery under failure: a crash between the CRM's create and the link write, rate limits
(429s beyond the limit, the client staying under it), daily quotas pausing the connector, bad
credentials. Always through the real pipeline, always asserting what the fake CRM holds."""

from __future__ import annotations

import asyncio
import math
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from relay.store.tables import connector_state
from tests.conftest import config_dict, make_settings, run_relay
from tests.crm_calls import current_inbound_missed, current_outbound
from tests.crm_support import FR_CALLER, UK_CONTACT, VENDORS, Vendor, post_all, running
from tests.test_dispatch import start_worker, write_config

ids = pytest.mark.parametrize("vendor", VENDORS, ids=lambda v: v.name)


def day(n: int) -> list[tuple[str, bytes]]:
    """n calls: alternately outbound answered and inbound missed, current generation."""
    events = []
    for i in range(n):
        if i % 2:
            events += current_inbound_missed(f"day_{i}", FR_CALLER, offset=i * 1000)
        else:
            events += current_outbound(f"day_{i}", UK_CONTACT, offset=i * 1000)
    return events


@ids
@pytest.mark.parametrize("fault", ["hang", "500"])
async def test_failure_after_the_create_still_makes_one_record(
    db_url: str, vendor: Vendor, fault: str
) -> None:
    """The CRM persisted the create, but the answer never came back (timeout) or was a 500:
    the link was never written. The retry finds the record by its marker instead of creating."""
    fake = vendor.fake()
    vendor.seed(fake)
    fake.faults.set(fault)
    async with running(fake) as url:
        block = vendor.block(fake, url, delivery={"timeout": "1s"})
        async with run_relay(make_settings(db_url, {"crm": block})) as relay:
            await post_all(relay, current_outbound("crash_1", UK_CONTACT), "q7m2xk")
            rows = await relay.settled()
            assert all(r.state == "succeeded" for r in rows)
            assert fake.faults.hit.is_set()
            retried = [r for r in rows if r.attempts == 2]
            assert len(retried) == 1  # the delivery whose create was cut off, and only it
    [record] = vendor.records(fake, "crash_1")
    assert len(vendor.all_records(fake)) == 1
    assert vendor.outcome(record) in ("COMPLETED", "connected")


async def test_worker_killed_between_create_and_link_write(db_url: str, tmp_path: Path) -> None:
    """A real `relay worker` process dies (SIGKILL) while HubSpot has already stored the call;
    another dispatcher takes the delivery over after the lease and finds the call by marker."""
    vendor = Vendor("hubspot")
    fake = vendor.fake()
    vendor.seed(fake)
    fake.faults.set("hang")
    async with running(fake) as url:
        connectors = {"crm": vendor.block(fake, url, delivery={"timeout": "2s"})}
        async with run_relay(make_settings(db_url, connectors), dispatch=False) as relay:
            await post_all(relay, current_outbound("killed_1", UK_CONTACT), "q7m2xk")
        data = config_dict(db_url, connectors)
        data["dispatch"]["lease"] = "1s"
        worker = start_worker(write_config(tmp_path / "relay.yaml", data))
        try:
            await asyncio.wait_for(fake.faults.hit.wait(), 60)  # the create is stored...
        finally:
            worker.send_signal(signal.SIGKILL)  # ...and the worker dies before the link write
            worker.wait()
        assert len(fake.calls) == 1
        async with run_relay(make_settings(db_url, connectors)) as relay:
            rows = await relay.settled(timeout=60)
            assert all(r.state == "succeeded" for r in rows)
    [call] = vendor.records(fake, "killed_1")
    assert len(fake.calls) == 1
    assert call["properties"]["hs_call_status"] == "COMPLETED"
    searches = [e for e in fake.log if e[1] == "/crm/v3/objects/calls/search"]
    assert len(searches) == 1  # only the recovering attempt searched


@ids
async def test_429_beyond_the_limit_every_call_still_logged_once(
    db_url: str, vendor: Vendor
) -> None:
    """The account's limit is lower than the connector was told (another app shares it): the
    fake answers 429, the connector waits as told, and every call is logged exactly once."""
    fake = vendor.fake(limit=3, interval=0.5)
    vendor.seed(fake)
    async with running(fake) as url:
        block = vendor.block(
            fake, url, rate_limit={"requests": 40, "per": 1}, delivery={"max_attempts": 30}
        )
        async with run_relay(make_settings(db_url, {"crm": block})) as relay:
            await post_all(relay, day(4), "q7m2xk")
            rows = await relay.settled(timeout=90)
            assert all(r.state == "succeeded" for r in rows)
            tries = [a for r in rows for a in await relay.attempts(r.id)]
    assert fake.burst.rejected > 0
    assert fake.burst.busiest() <= 3  # the fake enforces its window...
    limited = [a for a in tries if a.status_code == 429]
    assert limited and all(a.outcome == "retry" for a in limited)  # ...and 429s were retried
    for i in range(4):
        assert len(vendor.records(fake, f"day_{i}")) == 1
    assert len(vendor.all_records(fake)) == 4


@ids
async def test_client_side_buckets_keep_under_the_published_limit(
    db_url: str, vendor: Vendor
) -> None:
    fake = vendor.fake(limit=10, interval=1.0, search_limit=5)
    vendor.seed(fake)
    async with running(fake) as url:
        block = vendor.block(
            fake,
            url,
            rate_limit={"requests": 8, "per": 1},
            search_rate_limit={"requests": 4, "per": 1},
        )
        async with run_relay(make_settings(db_url, {"crm": block})) as relay:
            await post_all(relay, day(4), "q7m2xk")
            rows = await relay.settled(timeout=60)
            assert all(r.state == "succeeded" for r in rows)
    assert fake.rejected_for_rate == 0  # never over the published limit, so never a 429
    assert fake.burst.busiest() <= 10 and fake.search.busiest() <= 5
    assert len(vendor.all_records(fake)) == 4


@ids
async def test_daily_quota_pauses_the_connector_until_the_reset(
    db_url: str, vendor: Vendor
) -> None:
    reset = math.ceil(time.time()) + 3
    quota = {"daily_limit": 8} if vendor.name == "hubspot" else {"daily_budget": 130}
    fake = vendor.fake(daily_reset_at=reset, **quota)
    vendor.seed(fake)
    at = datetime.fromtimestamp(reset, UTC)
    async with running(fake) as url:
        block = vendor.block(fake, url, daily_reset=at.strftime("%H:%M:%S"), timezone="UTC")
        async with run_relay(make_settings(db_url, {"crm": block})) as relay:
            await post_all(relay, day(3), "q7m2xk")
            rows = await relay.settled(timeout=60)
            assert all(r.state == "succeeded" for r in rows)
            [state] = await relay.rows(connector_state)
            tries = {r.id: await relay.attempts(r.id) for r in rows}
    assert fake.daily.rejected >= 1
    assert state.paused_until.replace(tzinfo=UTC) == at  # paused until the reset, to the second
    assert "daily" in state.pause_reason.lower()
    paused = [a for attempts in tries.values() for a in attempts if a.outcome == "paused"]
    assert paused and all(a.status_code == 429 for a in paused)
    for row in rows:  # waiting out the quota did not burn attempts
        assert row.attempts == len([a for a in tries[row.id] if a.outcome != "paused"])
    for i in range(3):
        assert len(vendor.records(fake, f"day_{i}")) == 1


@ids
async def test_rejected_token_is_permanent_with_a_clear_message(
    db_url: str, vendor: Vendor
) -> None:
    fake = vendor.fake()
    vendor.seed(fake)
    secret = "pat-na1-revoked-0000" if vendor.name == "hubspot" else "revoked0000"
    key = "token" if vendor.name == "hubspot" else "api_token"
    async with running(fake) as url:
        block = vendor.block(fake, url, **{key: secret})
        async with run_relay(make_settings(db_url, {"crm": block})) as relay:
            await post_all(relay, current_outbound("auth_1", UK_CONTACT), "q7m2xk")
            rows = await relay.settled()
            await asyncio.sleep(0.6)  # three retry periods: nothing more may arrive
            dead = [r for r in rows if r.state == "dead"]
            assert dead and all(r.attempts == 1 for r in dead)
            for row in dead:
                assert "rejected" in row.last_error and "config.yaml" in row.last_error
                assert secret not in row.last_error
                [attempt] = await relay.attempts(row.id)
                assert attempt.status_code == 401
    assert len(fake.log) == len(dead)  # one request per dead delivery: no retry storm
    assert all(status == 401 for _, _, status in fake.log)
    assert vendor.all_records(fake) == []
