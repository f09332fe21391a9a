"""What is particular to the Dynamics 365 connector, beyond the scenarios every CRM passes: the
service protection limits (requests in a window, concurrent requests) pausing the connector, an
update that must not re-create a deleted phone call, OData quoting, config errors and secrets
kept out of check-config. Always against the loopback Dataverse fake, asserting what it holds."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay import PermanentError
from relay.connector import ConnectorContext, Limiters
from relay.store.records import Store
from tests.support.calls import current_outbound
from tests.support.cli import run, write
from tests.support.connectors import build, config_error
from tests.support.crm import (
    DYNAMICS,
    UK_CONTACT,
    day,
    paused_attempts,
    post_all,
    running,
    settled_opening,
)
from tests.support.relay import DONE, make_settings, run_relay

BASE = {
    "type": "dynamics",
    "url": "https://contoso.crm4.dynamics.com",
    "tenant_id": "t",
    "client_id": "c",
    "client_secret": "s3cr3t-value",
}


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
    fake = DYNAMICS.fake()
    DYNAMICS.seed(fake)
    *live, record = current_outbound("deleted_1", UK_CONTACT)
    async with (
        running(fake) as url,
        run_relay(make_settings(db_url, {"crm": DYNAMICS.block(fake, url)})) as relay,
    ):
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
