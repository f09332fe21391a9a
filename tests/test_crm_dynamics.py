"""What is particular to the Dynamics 365 connector, beyond the scenarios every CRM passes: the
service protection limits (requests in a window, concurrent requests) pausing the connector, an
update that must not re-create a deleted phone call, the phone call completed by the final data
(and read-only from then on), OData quoting, config errors and secrets kept out of check-config.
Always against the loopback Dataverse fake, asserting what it holds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay import PermanentError
from relay.connector import ConnectorContext, Limiters
from relay.store.records import Store
from tests.support.calls import current_inbound_missed, current_outbound, legacy
from tests.support.cli import run, write
from tests.support.connectors import build, config_error
from tests.support.crm import (
    DYNAMICS,
    FR_CALLER,
    UK_CONTACT,
    day,
    duplicate,
    paused_attempts,
    post_all,
    post_live,
    running,
    settled_opening,
)
from tests.support.relay import DONE, RunningRelay, make_settings, run_relay

BASE = {
    "type": "dynamics",
    "url": "https://contoso.crm4.dynamics.com",
    "tenant_id": "t",
    "client_id": "c",
    "client_secret": "s3cr3t-value",
}


@contextlib.asynccontextmanager
async def logging_calls(db_url: str) -> AsyncIterator[tuple[Any, RunningRelay]]:
    """relay logging calls to a seeded Dataverse fake."""
    fake = DYNAMICS.fake()
    DYNAMICS.seed(fake)
    async with (
        running(fake) as url,
        run_relay(make_settings(db_url, {"crm": DYNAMICS.block(fake, url)})) as relay,
    ):
        yield fake, relay


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"url": "contoso.crm4.dynamics.com"}, "`url` must start with https://"),
        ({"client_secret": " "}, "`client_secret` is empty"),
        ({"api_version": "9.2"}, "looks like v9.2"),
        ({"limit_pause": 0}, "`limit_pause` must be positive"),
    ],
)
def test_config_errors_say_what_to_set(change: dict[str, Any], message: str) -> None:
    assert message in config_error(BASE | change, "crm")


async def test_lookups_quote_odata_literals_and_match_typed_numbers(store: Store) -> None:
    """The fake refuses a filter whose quote is not doubled; a national spelling is found."""
    fake = DYNAMICS.fake()
    seeded = DYNAMICS.seed(fake)
    odd = fake.add_user("o'neil@example.org", "Siobhan O'Neil")
    async with running(fake) as url, httpx.AsyncClient() as http:
        ctx = ConnectorContext(name="crm", http=http, store=store, limiters=Limiters())
        conn = build(DYNAMICS.block(fake, url), "crm")
        assert await conn.find_user("o'neil@example.org", ctx) == odd
        people = await conn.search_people(UK_CONTACT, ctx)
        assert [(p.id, p.kind, p.name) for p in people] == [
            (seeded["uk"], "contact", "Olivia Hart")
        ]
        raw = {"$filter": "internalemailaddress eq 'o'neil@example.org'"}
        with pytest.raises(PermanentError, match=r"0x80060888.*Syntax error"):
            await conn.call_api(ctx, "GET", "/systemusers", what="raw", params=raw)
    assert [e for e in fake.log if e[0] == "GET"] == [
        ("GET", "/api/data/v9.2/systemusers", 200),
        ("GET", "/api/data/v9.2/contacts", 200),  # the contact matched: no lead search
        ("GET", "/api/data/v9.2/systemusers", 400),  # the unescaped quote
    ]


async def test_requests_over_the_window_pause_the_connector_for_retry_after(db_url: str) -> None:
    """More requests than the 5-minute window allows: 429 ``0x80072322`` with Retry-After pauses
    the whole connector (attempts not counted). The window is long, so the 429 is certain; it
    opens once the fake has refused (settled_opening), not by the clock."""
    fake = DYNAMICS.fake(limit=3, interval=60.0, retry_after=1)
    DYNAMICS.seed(fake)
    async with running(fake) as url:
        block = DYNAMICS.block(fake, url, rate_limit={"requests": 40, "per": 1})
        async with run_relay(make_settings(db_url, {"crm": block})) as relay:
            await post_all(relay, day(4), "q7m2xk")
            rows = await settled_opening(relay, fake.burst, timeout=60)
            tries = {r.id: await relay.attempts(r.id) for r in rows}
            paused = await paused_attempts(relay)
    assert all(r.state in DONE for r in rows)
    assert fake.burst.rejected > 0 and fake.burst.busiest() <= 3
    assert paused and all(a.status_code == 429 for a in paused)
    assert all("0x80072322" in (a.error or "") for a in paused)
    for row in rows:  # waiting out the limit did not burn attempts
        assert row.attempts == len([a for a in tries[row.id] if a.outcome != "paused"])
    for i in range(4):
        assert len(DYNAMICS.records(fake, f"day_{i}")) == 1
    assert len(fake.phonecalls) == 4


async def test_concurrent_requests_over_the_limit_pause_then_resume(db_url: str) -> None:
    """A create hangs in Dataverse (persisted, no answer) while other calls' requests arrive:
    over the concurrency limit they get 429 ``0x80072326``. Once the hung request ends, every
    call is logged once: the cut-off create is found by its marker, not made twice."""
    fake = DYNAMICS.fake(concurrency=1, retry_after=1)
    DYNAMICS.seed(fake)
    fake.faults.set("hang")
    async with running(fake) as url:
        block = DYNAMICS.block(fake, url, delivery={"timeout": "2s"})
        async with run_relay(make_settings(db_url, {"crm": block})) as relay:
            await post_all(relay, day(2), "q7m2xk")
            await asyncio.wait_for(fake.faults.hit.wait(), 30)

            async def refused() -> bool:
                return fake.rejected_for_concurrency > 0

            await relay.wait_until(refused, 30, "a request over the concurrency limit")
            fake.faults.release.set()  # the hung request ends (with a 500)
            rows = await relay.settled(timeout=60)
            paused = await paused_attempts(relay)
    assert all(r.state in DONE for r in rows)
    assert paused and any("0x80072326" in (a.error or "") for a in paused)
    for i in range(2):
        assert len(DYNAMICS.records(fake, f"day_{i}")) == 1
    assert len(fake.phonecalls) == 2


async def test_an_update_never_recreates_a_deleted_phone_call(db_url: str) -> None:
    """Someone deleted the phone call in Dynamics mid-call: the update (If-Match: *) is refused
    with 404 and the delivery is dead, rather than PATCH upserting a new record."""
    *live, record = current_outbound("deleted_1", UK_CONTACT)
    async with logging_calls(db_url) as (fake, relay):
        await post_all(relay, live, "q7m2xk")  # created at the live end
        await relay.settled()
        [created] = list(fake.phonecalls)
        del fake.phonecalls[created]
        await post_all(relay, [record], "q7m2xk")
        rows = await relay.settled()
    dead = [r for r in rows if r.state == "dead"]
    assert dead and all("Does Not Exist" in (r.last_error or "") for r in dead)
    assert fake.phonecalls == {}
    assert ("PATCH", f"/api/data/v9.2/phonecalls({created})", 404) in fake.log


def writes(fake: Any, record: dict[str, Any]) -> list[tuple[str, int]]:
    """(method, status) of every write to one phone call after its create."""
    path = f"/api/data/v9.2/phonecalls({record['activityid']})"
    return [(method, status) for method, p, status in fake.log if p == path and method != "GET"]


@pytest.mark.parametrize("outage", [False, True], ids=["live", "after_outage"])
async def test_the_final_data_completes_the_phone_call(db_url: str, outage: bool) -> None:
    """The write carrying the final record also completes the phone call: statecode 1, status
    Made (outgoing) or Received (incoming), so it leaves the open activities. Live, that is the
    last update. After an outage (every event in before anything is delivered) each call is
    created from its final data, and since statecode is not valid for create, one update right
    after the create completes it."""
    fake = DYNAMICS.fake()
    DYNAMICS.seed(fake)
    calls = [
        current_outbound("made_1", UK_CONTACT),
        current_inbound_missed("received_1", FR_CALLER),
    ]
    async with running(fake) as url:
        settings = make_settings(db_url, {"crm": DYNAMICS.block(fake, url)})
        if outage:
            async with run_relay(settings, dispatch=False) as relay:
                for events in calls:
                    await post_all(relay, events, "q7m2xk")
        async with run_relay(settings) as relay:
            for events in [] if outage else calls:
                await post_live(relay, events, "q7m2xk")
            rows = await relay.settled()
    assert all(r.state in DONE for r in rows)
    [out] = DYNAMICS.records(fake, "made_1")
    [missed] = DYNAMICS.records(fake, "received_1")
    assert (out["statecode"], out["statuscode"], out["directioncode"]) == (1, 2, True)
    assert (missed["statecode"], missed["statuscode"], missed["directioncode"]) == (1, 4, False)
    assert (out["category"], DYNAMICS.seconds(out)) == ("Answered", 181)  # the final 180.602 s
    assert (missed["category"], DYNAMICS.seconds(missed)) == ("Missed", 28)  # final: 28.313 s
    for record in (out, missed):
        # live: created, then updated as the call went; after the outage: created, completed
        assert writes(fake, record)[-1] == ("PATCH", 204)
        assert len(writes(fake, record)) == (1 if outage else record["updates"])


async def test_complete_calls_false_leaves_the_phone_call_open_for_a_write_less(
    db_url: str,
) -> None:
    """After an outage the call is created from its final data: with ``complete_calls: false``
    that create is its only write, and the phone call stays open."""
    fake = DYNAMICS.fake()
    DYNAMICS.seed(fake)
    async with running(fake) as url:
        block = DYNAMICS.block(fake, url, complete_calls=False)
        settings = make_settings(db_url, {"crm": block})
        async with run_relay(settings, dispatch=False) as relay:
            await post_all(relay, current_outbound("open_1", UK_CONTACT), "q7m2xk")
        async with run_relay(settings) as relay:
            rows = await relay.settled()
    assert all(r.state in DONE for r in rows)
    [call] = DYNAMICS.records(fake, "open_1")
    assert (call["statecode"], call["category"], DYNAMICS.seconds(call)) == (0, "Answered", 181)
    assert writes(fake, call) == []  # the create only


async def test_a_duplicate_or_late_event_after_completion_writes_nothing(db_url: str) -> None:
    """Wildix re-sends the final record, and a live end arrives late: the completed (read-only)
    phone call is not written again, and no delivery fails on it."""
    events = current_outbound("dup_1", UK_CONTACT)
    (_, end), (_, record) = events[2], events[3]
    async with logging_calls(db_url) as (fake, relay):
        await post_live(relay, events, "q7m2xk")
        [done] = DYNAMICS.records(fake, "dup_1")
        before, content = len(fake.log), dict(done)
        await post_live(relay, [("record", duplicate(record)), ("end", duplicate(end))], "q7m2xk")
        rows = await relay.settled()
    assert all(r.state in DONE for r in rows) and len(rows) == 6
    assert fake.log[before:] == []  # not a request: the fingerprint matched
    assert DYNAMICS.records(fake, "dup_1") == [content] and content["statecode"] == 1


async def test_a_lost_answer_to_the_completing_update_leaves_one_completed_call(
    db_url: str,
) -> None:
    """Dataverse commits the completing update but answers 500 (as if relay had died before
    saving it): the retry's update is refused by the now read-only phone call; relay reads the
    phone call, finds it holds exactly that update, and is done — one phone call, completed,
    with the final data, nothing dead and nothing reopened."""
    *live, final = current_outbound("lost_1", UK_CONTACT)
    async with logging_calls(db_url) as (fake, relay):
        await post_live(relay, live, "q7m2xk")
        fake.update_faults.set("500")
        await post_all(relay, [final], "q7m2xk")
        rows = await relay.settled(timeout=60)
    assert fake.update_faults.hit.is_set()
    assert all(r.state in DONE for r in rows)
    [record] = DYNAMICS.records(fake, "lost_1")
    assert (record["statecode"], record["statuscode"]) == (1, 2)
    assert (record["category"], DYNAMICS.seconds(record)) == ("Answered", 181)
    assert writes(fake, record)[-2:] == [("PATCH", 500), ("PATCH", 400)]  # no reopen
    path = f"/api/data/v9.2/phonecalls({record['activityid']})"
    assert ("GET", path, 200) in fake.log  # the phone call read back
    assert [e for e in fake.log if e[:2] == ("POST", "/api/data/v9.2/phonecalls")] == [
        ("POST", "/api/data/v9.2/phonecalls", 204)
    ]


async def test_a_phone_call_completed_in_dynamics_is_reopened_for_the_update(
    db_url: str,
) -> None:
    """Someone completes the phone call in Dynamics before the final record: its update is
    refused (read-only), so relay reopens it, writes, and the final data completes it again."""
    *live, final = current_outbound("user_1", UK_CONTACT)
    async with logging_calls(db_url) as (fake, relay):
        await post_live(relay, live, "q7m2xk")  # created at the live end, still open
        [record] = DYNAMICS.records(fake, "user_1")
        record.update(statecode=1, statuscode=2)  # "Mark Complete" in Dynamics
        await post_live(relay, [final], "q7m2xk")
        rows = await relay.settled()
    assert all(r.state in DONE for r in rows)
    assert DYNAMICS.records(fake, "user_1") == [record]
    assert (record["statecode"], record["statuscode"], record["category"]) == (1, 2, "Answered")
    assert writes(fake, record)[:3] == [("PATCH", 400), ("PATCH", 204), ("PATCH", 204)]


async def test_a_correction_after_completion_reopens_and_completes_again(db_url: str) -> None:
    """A legacy call's end (its final data) arrives before its start: the phone call is created
    and completed with no start time; the late start corrects the start and duration, so the
    completed phone call is reopened, written and completed again, with the corrected data."""
    start, update, end = legacy("late_start", UK_CONTACT)
    async with logging_calls(db_url) as (fake, relay):
        await post_live(relay, [end], "h3p9ta")
        [record] = DYNAMICS.records(fake, "late_start")
        assert (record["statecode"], DYNAMICS.seconds(record)) == (1, 0)
        await post_live(relay, [start, update], "h3p9ta")
        rows = await relay.settled()
    assert all(r.state in DONE for r in rows)
    assert DYNAMICS.records(fake, "late_start") == [record]
    assert (record["statecode"], record["statuscode"], DYNAMICS.seconds(record)) == (1, 2, 125)
    assert writes(fake, record) == [("PATCH", 204), ("PATCH", 400), ("PATCH", 204), ("PATCH", 204)]


def test_check_config_masks_the_client_secret(tmp_path: Path) -> None:
    data = {
        "database": {"url": f"sqlite+aiosqlite:///{tmp_path}/r.db"},
        "connectors": {"d365": BASE | {"client_secret": "SECRET-d365-value"}},
        "integrations": {"q7m2xk": {"secret": "s", "routes": [{"connector": "d365"}]}},
    }
    result = run("check-config", config=write(tmp_path / "relay.yaml", data))
    assert result.returncode == 0, result.stderr
    assert "d365 (dynamics)" in result.stdout and '"api_version":"v9.2"' in result.stdout
    assert "SECRET" not in result.stdout + result.stderr
