"""Salesforce and Zoho CRM under failure, through the real pipeline: a crash between the CRM's
create and the link write, access tokens invalidated mid-run, a revoked grant fixed by the admin,
a missing OAuth scope, and each CRM's limits (Salesforce's 24-hour request limit, Zoho's 429)
pausing the connector. Always asserting what the fake CRM holds."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from relay.store.tables import connector_state
from tests.conftest import make_settings, run_relay
from tests.crm_calls import current_inbound_missed, current_outbound
from tests.crm_oauth_support import (
    SCENARIO_VENDORS,
    TOKEN_VENDORS,
    OAuthVendor,
    link_ids,
    retry_dead,
)
from tests.crm_support import FR_CALLER, UK_CONTACT, post_all, running
from tests.test_crm_resilience import day

SALESFORCE, ZOHO = SCENARIO_VENDORS
REFRESHING = [OAuthVendor("salesforce", "refresh_token"), ZOHO]


def label(vendor: OAuthVendor) -> str:
    return vendor.label


@pytest.mark.parametrize("vendor", SCENARIO_VENDORS, ids=label)
@pytest.mark.parametrize("fault", ["hang", "500"])
async def test_failure_after_the_create_still_makes_one_record(
    db_url: str, vendor: OAuthVendor, fault: str
) -> None:
    """The CRM stored the create but its answer was lost (timeout) or a 500: no link was
    written. The retry finds the record (Salesforce by CallObject, Zoho by the marker)."""
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
            assert len([r for r in rows if r.attempts == 2]) == 1  # the cut-off create, only
            links = await link_ids(relay)
    [record] = vendor.records(fake, "crash_1")
    assert len(vendor.all_records(fake)) == 1
    assert links == {"crash_1": vendor.record_id(record)}
    assert vendor.seconds(record) == 181  # the found record was brought up to date


@pytest.mark.parametrize("vendor", TOKEN_VENDORS, ids=label)
async def test_token_invalidated_mid_run_is_renewed_once(db_url: str, vendor: OAuthVendor) -> None:
    fake = vendor.fake()
    vendor.seed(fake)
    calls = day(4)  # two outbound answered, two inbound missed
    async with running(fake) as url:
        settings = make_settings(db_url, {"crm": vendor.block(fake, url)})
        async with run_relay(settings) as relay:
            await post_all(relay, calls[:7], "q7m2xk")  # the first call, and the second begun
            await relay.settled()
            assert fake.tokens.issued == 1
            vendor.expire_tokens(fake)  # a session timeout: every access token dies at once
            await post_all(relay, calls[7:], "q7m2xk")
            rows = await relay.settled()
            [state] = await relay.rows(connector_state)
    assert all(r.state == "succeeded" and r.attempts == 1 for r in rows)  # renewed in place
    assert fake.tokens.issued == 2  # one renewal, however many deliveries met the dead token
    assert [s for _, s, code in fake.log if code == 401]  # the fake did refuse the old token
    assert state.state["tokens_issued"] == 2
    assert state.state["oauth"]["access_token"] in fake.tokens.access
    for i in range(4):
        assert len(vendor.records(fake, f"day_{i}")) == 1
    assert len(vendor.all_records(fake)) == 4


@pytest.mark.parametrize("vendor", REFRESHING, ids=label)
async def test_revoked_grant_is_permanent_then_retried_by_hand(
    db_url: str, vendor: OAuthVendor
) -> None:
    fake = vendor.fake()
    seeded = vendor.seed(fake)
    old_token = fake.refresh_token
    vendor.revoke(fake)
    async with running(fake) as url:
        block = vendor.block(fake, url)
        async with run_relay(make_settings(db_url, {"crm": block})) as relay:
            await post_all(relay, current_inbound_missed("revoked_1", FR_CALLER), "q7m2xk")
            rows = await relay.settled()
            await asyncio.sleep(0.6)  # three retry periods: nothing more may be tried
            dead = [r for r in await relay.deliveries() if r.state == "dead"]
        # (an event that needs no request, such as Zoho's live start, succeeds meanwhile)
        assert dead and len(rows) == 3 and all(r.attempts == 1 for r in dead)
        for row in dead:
            assert "refused to issue an access token" in row.last_error
            assert (
                "refresh_token" in row.last_error and "retry the dead deliveries" in row.last_error
            )
            assert old_token not in row.last_error and fake.client_secret not in row.last_error
        assert vendor.all_records(fake) == []
        refused = len(fake.tokens.requests)
        assert refused == len(dead)  # one token request per delivery: no retry storm
        # the admin authorizes the app again and puts the new refresh token in config.yaml
        block["refresh_token"] = fake.new_refresh_token()
        async with run_relay(make_settings(db_url, {"crm": block})) as relay:
            assert await retry_dead(relay) == len(dead)
            rows = await relay.settled()
            assert all(r.state == "succeeded" for r in rows)
    [record] = vendor.records(fake, "revoked_1")
    assert vendor.person(record) == seeded["fr"]
    assert fake.tokens.issued == 1


async def test_zoho_missing_scope_is_permanent_without_token_churn(db_url: str) -> None:
    fake = ZOHO.fake()
    ZOHO.seed(fake)
    fake.new_refresh_token(frozenset({"ZohoCRM.modules.contacts.READ", "ZohoCRM.users.READ"}))
    async with running(fake) as url:
        settings = make_settings(db_url, {"crm": ZOHO.block(fake, url)})
        async with run_relay(settings) as relay:
            await post_all(relay, current_outbound("scope_1", UK_CONTACT), "q7m2xk")
            rows = await relay.settled()
    dead = [r for r in rows if r.state == "dead"]  # the live end and the record: creates
    assert len(dead) == 2 and all(r.attempts == 1 for r in dead)
    for row in dead:
        assert "OAUTH_SCOPE_MISMATCH" in row.last_error
        assert "ZohoCRM.modules.calls.ALL" in row.last_error  # what to grant
    assert fake.tokens.issued == 1  # a missing scope is not an expired token: no renewal
    assert fake.calls == {}


async def test_salesforce_request_limit_pauses_then_resumes(db_url: str) -> None:
    reset = math.ceil(time.time()) + 2
    fake = SALESFORCE.fake(daily_limit=12, daily_reset_at=reset)
    SALESFORCE.seed(fake)
    async with running(fake) as url:
        block = SALESFORCE.block(fake, url, limit_pause="0.5s")
        async with run_relay(make_settings(db_url, {"crm": block})) as relay:
            await post_all(relay, day(3), "q7m2xk")
            rows = await relay.settled(timeout=60)
            [state] = await relay.rows(connector_state)
            tries = {r.id: await relay.attempts(r.id) for r in rows}
    assert all(r.state == "succeeded" for r in rows)
    assert fake.daily.rejected >= 1
    paused = [a for attempts in tries.values() for a in attempts if a.outcome == "paused"]
    assert paused and all(a.status_code == 403 for a in paused)
    assert (
        "REQUEST_LIMIT_EXCEEDED" in state.pause_reason and "api-usage=12/12" in state.pause_reason
    )
    for row in rows:  # waiting out the limit did not burn attempts
        assert row.attempts == len([a for a in tries[row.id] if a.outcome != "paused"])
    used, limit = (int(n) for n in state.state["api_usage"].split("/"))
    assert limit == 12 and 0 < used <= 12  # Sforce-Limit-Info, kept in the connector state
    for i in range(3):
        assert len(SALESFORCE.records(fake, f"day_{i}")) == 1
    assert len(fake.tasks) == 3


async def test_zoho_429_pauses_then_resumes(db_url: str) -> None:
    fake = ZOHO.fake(limit=3, interval=1.0)
    ZOHO.seed(fake)
    async with running(fake) as url:
        block = ZOHO.block(fake, url, limit_pause="0.5s", rate_limit={"requests": 40, "per": 1})
        async with run_relay(make_settings(db_url, {"crm": block})) as relay:
            await post_all(relay, day(4), "q7m2xk")
            rows = await relay.settled(timeout=60)
            tries = {r.id: await relay.attempts(r.id) for r in rows}
    assert all(r.state == "succeeded" for r in rows)
    assert fake.burst.rejected > 0 and fake.burst.busiest() <= 3
    paused = [a for attempts in tries.values() for a in attempts if a.outcome == "paused"]
    assert paused and all(a.status_code == 429 for a in paused)
    for row in rows:
        assert row.attempts == len([a for a in tries[row.id] if a.outcome != "paused"])
    for i in range(4):
        assert len(ZOHO.records(fake, f"day_{i}")) == 1
    assert len(fake.calls) == 4
