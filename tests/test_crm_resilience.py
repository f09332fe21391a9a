"""CRM delivery under failure, against each CRM it applies to: a crash between the CRM's create
and the link write, rate limits (429s beyond the limit, the client staying under it), daily quotas
and Salesforce's 24-hour request limit pausing the connector, bad credentials, and for the OAuth
CRMs (Salesforce, Zoho) access tokens invalidated mid-run, a revoked grant fixed by the admin and a
missing OAuth scope. Always through the real pipeline, always asserting what the fake CRM holds."""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from relay.config import load_config
from relay.store.tables import (
    attempts,
    circuit_transitions,
    circuits,
    connector_state,
    deliveries,
    incidents,
)
from tests.support.calls import current_inbound_missed, current_outbound
from tests.support.crm import (
    DYNAMICS,
    FR_CALLER,
    FRESHDESK,
    HUBSPOT,
    REFRESHING,
    SALESFORCE,
    TOKEN_VENDORS,
    UK_CONTACT,
    VENDORS,
    ZENDESK,
    ZOHO,
    Vendor,
    day,
    link_ids,
    paused_attempts,
    post_all,
    running,
    settled_opening,
    vendor_id,
)
from tests.support.operations import TOKEN, api, open_incidents, resolved
from tests.support.relay import (
    DONE,
    RunningRelay,
    capture_log,
    config_dict,
    make_settings,
    run_relay,
    start_worker,
    write_config,
)

STATIC = [vendor for vendor in VENDORS if not vendor.oauth]  # the CRMs with a static API token
ids = pytest.mark.parametrize("vendor", VENDORS, ids=vendor_id)
static_ids = pytest.mark.parametrize("vendor", STATIC, ids=vendor_id)
BREAKER = {"failures": 2, "cool_down": "0.4s", "max": "1.6s"}
# where relay keeps what a failure said: no secret may reach any of them
STORED = (attempts, deliveries, circuits, circuit_transitions, connector_state, incidents)


@ids
@pytest.mark.parametrize("fault", ["hang", "500"])
async def test_failure_after_the_create_still_makes_one_record(
    db_url: str, vendor: Vendor, fault: str
) -> None:
    """The CRM persisted the create, but the answer never came back (timeout) or was a 500:
    the link was never written. The retry finds the record (by its marker; Salesforce by
    CallObject) instead of creating another. The 3 s timeout leaves room for a busy machine's
    pauses: only the hung create is cut off."""
    fake = vendor.fake()
    vendor.seed(fake)
    fake.faults.set(fault)  # a hang lasts until the fake shuts down (2 minutes at most)
    async with running(fake) as url:
        block = vendor.block(fake, url, delivery={"timeout": "3s"})
        async with run_relay(make_settings(db_url, {"crm": block})) as relay:
            await post_all(relay, current_outbound("crash_1", UK_CONTACT), "q7m2xk")
            rows = await relay.settled()
            assert all(r.state in DONE for r in rows)
            assert fake.faults.hit.is_set()
            # the delivery whose create was cut off, and only it, was tried again, or left out
            # for a newer state of the call (whose attempt then found the record)
            cut = [r for r in rows if r.attempts == 2 or (r.state, r.attempts) == ("superseded", 1)]
            assert len(cut) == 1
            links = await link_ids(relay)
    [record] = vendor.records(fake, "crash_1")
    assert len(vendor.all_records(fake)) == 1
    assert links == {"crash_1": vendor.record_id(record)}
    assert vendor.outcome(record) == vendor.outcomes["completed"]
    # the found record was brought up to date: the final record's 180.602 s
    assert vendor.seconds(record) == vendor.kept_seconds(180_602)


# how each CRM looks its record up by marker after a crash: (method, path ending)
MARKER_LOOKUP = {
    "hubspot": ("POST", "/crm/v3/objects/calls/search"),
    "dynamics": ("GET", "/phonecalls"),
    "zendesk": ("GET", "/api/v2/tickets"),  # by external_id
    "freshdesk": ("GET", "/api/v2/tickets"),  # the requester's recent tickets, by marker tag
}


@pytest.mark.parametrize("vendor", [HUBSPOT, DYNAMICS, ZENDESK, FRESHDESK], ids=vendor_id)
async def test_worker_killed_between_create_and_link_write(
    db_url: str, tmp_path: Path, vendor: Vendor
) -> None:
    """A real `relay worker` process dies (SIGKILL) while the CRM has already stored the call;
    another dispatcher takes the delivery over after the lease and finds the call by marker.
    Only the killed worker has the short timeout (its lease: 2 s + 1 s); the recovering one has
    time to spare, so a pause of a busy machine does not make it search twice."""
    fake = vendor.fake()
    vendor.seed(fake)
    fake.faults.set("hang")
    async with running(fake) as url:
        short = {"crm": vendor.block(fake, url, delivery={"timeout": "2s"})}
        connectors = {"crm": vendor.block(fake, url, delivery={"timeout": "10s"})}
        async with run_relay(make_settings(db_url, connectors), dispatch=False) as relay:
            await post_all(relay, current_outbound("killed_1", UK_CONTACT), "q7m2xk")
        data = config_dict(db_url, short)
        data["dispatch"]["lease"] = "1s"
        worker = start_worker(write_config(tmp_path / "relay.yaml", data))
        try:
            await asyncio.wait_for(fake.faults.hit.wait(), 60)  # the create is stored...
        finally:
            worker.send_signal(signal.SIGKILL)  # ...and the worker dies before the link write
            worker.wait()
        assert len(vendor.all_records(fake)) == 1
        async with run_relay(make_settings(db_url, connectors)) as relay:
            rows = await relay.settled(timeout=60)
            assert all(r.state in DONE for r in rows)
    [call] = vendor.records(fake, "killed_1")
    assert len(vendor.all_records(fake)) == 1
    assert vendor.outcome(call) == vendor.outcomes["completed"]
    method, path = MARKER_LOOKUP[vendor.name]
    searches = [e for e in fake.log if e[0] == method and e[1].endswith(path)]
    assert len(searches) == 1  # only the recovering attempt searched


@static_ids
async def test_429_beyond_the_limit_every_call_still_logged_once(
    db_url: str, vendor: Vendor
) -> None:
    """The account's limit is lower than the connector was told (another app shares it): the
    fake answers 429, the connector waits as told, and every call is logged exactly once. The
    fake's window is a minute long, so the 429 is certain however slow the machine; its 429s
    still name a short wait, and the window opens once the fake has refused (settled_opening), so
    the retries go on from what the fake saw, not from the clock."""
    fake = vendor.fake(limit=3, interval=60.0)
    fake.burst.announce = 0.5  # a 429 names a wait of a second or less
    vendor.seed(fake)
    async with running(fake) as url:
        block = vendor.block(
            fake, url, rate_limit={"requests": 40, "per": 1}, delivery={"max_attempts": 30}
        )
        async with run_relay(make_settings(db_url, {"crm": block})) as relay:
            await post_all(relay, day(4), "q7m2xk")
            rows = await settled_opening(relay, fake.burst, timeout=90)
            assert all(r.state in DONE for r in rows)
            tries = [a for r in rows for a in await relay.attempts(r.id)]
    assert fake.burst.rejected > 0
    assert fake.burst.busiest() <= 3  # the fake enforces its window...
    limited = [a for a in tries if a.status_code == 429]
    # ...and 429s were retried, or held while they opened the connector's circuit
    assert limited and all(a.outcome in ("retry", "held") for a in limited)
    for i in range(4):
        assert len(vendor.records(fake, f"day_{i}")) == 1
    assert len(vendor.all_records(fake)) == 4


@static_ids
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
            assert all(r.state in DONE for r in rows)
    assert fake.rejected_for_rate == 0  # never over the published limit, so never a 429
    assert fake.burst.busiest() <= 10 and fake.search.busiest() <= 5
    assert len(vendor.all_records(fake)) == 4


@pytest.mark.parametrize("vendor", [v for v in STATIC if v.daily_quota], ids=vendor_id)
async def test_daily_quota_pauses_the_connector_until_the_reset(
    db_url: str, vendor: Vendor
) -> None:
    """The connector pauses until the configured daily reset, to the second, and resumes then.
    The fake's quota renews only once the test has seen the pause, so the quota is always spent
    first; the reset is far enough ahead that the pause starts before it, even on a busy machine
    (relay starts, twice for HubSpot, and spends the quota first)."""
    # HubSpot: the day is queued first, so coalescing sends each call's final record only: three
    # creates and two searches (at least 5 requests) against a quota of 4
    queued = vendor.name == "hubspot"
    quota = {"daily_limit": 4} if queued else {"daily_budget": 130}
    fake = vendor.fake(**quota)  # no renewal of its own until the test sets the reset below
    vendor.seed(fake)

    async def pause() -> Any:
        rows = await relay.rows(connector_state)
        return rows[0] if rows and rows[0].paused_until is not None else None

    async with running(fake) as url:
        reset = math.ceil(time.time()) + 14
        at = datetime.fromtimestamp(reset, UTC)
        block = vendor.block(fake, url, daily_reset=at.strftime("%H:%M:%S"), timezone="UTC")
        settings = make_settings(db_url, {"crm": block})
        if queued:
            async with run_relay(settings, dispatch=False) as relay:
                await post_all(relay, day(3), "q7m2xk")
        async with run_relay(settings) as relay:
            if not queued:
                await post_all(relay, day(3), "q7m2xk")
            paused = await relay.wait_until(pause, 30, "the connector to pause")
            assert paused.paused_until.replace(tzinfo=UTC) == at  # before the reset, until it
            assert not all(r.state in DONE for r in await relay.deliveries())
            fake.daily.reset_at = reset  # the CRM's quota renews at the reset, as configured
            rows = await relay.settled(timeout=60)
            assert all(r.state in DONE for r in rows)
            [state] = await relay.rows(connector_state)
            tries = {r.id: await relay.attempts(r.id) for r in rows}
    assert fake.daily.rejected >= 1
    assert state.paused_until.replace(tzinfo=UTC) == at  # paused until the reset, to the second
    assert "daily" in state.pause_reason.lower()
    paused_tries = [a for attempts in tries.values() for a in attempts if a.outcome == "paused"]
    assert paused_tries and all(a.status_code == 429 for a in paused_tries)
    for row in rows:  # waiting out the quota did not burn attempts
        assert row.attempts == len([a for a in tries[row.id] if a.outcome != "paused"])
    for i in range(3):
        assert len(vendor.records(fake, f"day_{i}")) == 1


@static_ids
async def test_rejected_token_holds_the_deliveries_with_a_clear_message(
    db_url: str, vendor: Vendor
) -> None:
    """A revoked token is the connector's fault, not the event's: the circuit opens at the
    first rejection (no probe within the test), the deliveries wait, none goes dead."""
    fake = vendor.fake()
    vendor.seed(fake)
    secret = "pat-na1-revoked-0000" if vendor.name == "hubspot" else "revoked0000"
    assert vendor.token_key
    breaker = {"failures": 1, "cool_down": "1h", "max": "1h"}
    async with running(fake) as url:
        block = vendor.block(fake, url, circuit=breaker, **{vendor.token_key: secret})
        async with run_relay(make_settings(db_url, {"crm": block})) as relay:
            await post_all(relay, current_outbound("auth_1", UK_CONTACT), "q7m2xk")
            reason = await relay.wait_until(lambda: _held(relay), what="the circuit to open")
            rows = await relay.wait_until(lambda: _all_waiting(relay), what="attempts to end")
            assert all(r.attempts == 0 for r in rows)  # held: the attempt was given back
            tries = [a for row in rows for a in await relay.attempts(row.id)]
    assert "rejected" in reason and "config.yaml" in reason and secret not in reason
    assert tries and all(a.status_code == 401 and a.outcome == "held" for a in tries)
    for row in rows:
        if row.last_error:
            assert "rejected" in row.last_error and "config.yaml" in row.last_error
            assert "resume on their own" in row.last_error and secret not in row.last_error
    assert len(fake.log) == len(tries)  # one request per attempt, then none: no retry storm
    assert all(status == 401 for _, _, status in fake.log)
    assert vendor.all_records(fake) == []


async def _held(relay: RunningRelay) -> str | None:
    """The reason of the connector's circuit once it holds its deliveries."""
    circuit = (await relay.store.circuits()).get("crm")
    return circuit.reason if circuit is not None and circuit.holds else None


async def _all_waiting(relay: RunningRelay) -> list[Any] | None:
    """The waiting deliveries once none is being attempted (one that needs no request is
    done); none may go dead."""
    rows = await relay.deliveries()
    assert not [r for r in rows if r.state == "dead"], [r.last_error for r in rows]
    waiting = [r for r in rows if r.state == "pending"]
    return waiting if waiting and all(r.state in ("pending", *DONE) for r in rows) else None


async def _none_open(relay: RunningRelay) -> bool:
    return not await relay.store.incidents(open_only=True)


async def _probed(relay: RunningRelay, n: int) -> list[Any] | None:
    """The circuit's probes, once there are at least ``n``."""
    rows = await relay.rows(circuit_transitions, circuit_transitions.c.reason == "probe")
    return rows if len(rows) >= n else None


@pytest.mark.parametrize("vendor", TOKEN_VENDORS, ids=vendor_id)
async def test_token_invalidated_mid_run_is_renewed_once(db_url: str, vendor: Vendor) -> None:
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
    assert all(r.state in DONE for r in rows)
    assert all(r.attempts == 1 for r in rows if r.state == "succeeded")  # renewed in place
    assert fake.tokens.issued == 2  # one renewal, however many deliveries met the dead token
    assert [s for _, s, code in fake.log if code == 401]  # the fake did refuse the old token
    assert state.state["tokens_issued"] == 2
    assert state.state["oauth"]["access_token"] in fake.tokens.access
    for i in range(4):
        assert len(vendor.records(fake, f"day_{i}")) == 1
    assert len(vendor.all_records(fake)) == 4


@pytest.mark.parametrize("vendor", REFRESHING, ids=vendor_id)
async def test_revoked_grant_holds_the_deliveries_until_the_new_refresh_token_is_reloaded(
    db_url: str,
    vendor: Vendor,
    tmp_path: Path,
) -> None:
    """The admin revoked the app's grant: no delivery of the connector can get a token, so the
    refusal counts towards its circuit like a rejected API token. The deliveries wait (none goes
    dead, held attempts are given back), the auth_revoked incident says what to fix; once the
    admin puts a new refresh token in config.yaml and reloads, the next probe gets a token and
    the backlog drains without anyone retrying anything, and the incident resolves."""
    fake = vendor.fake()
    seeded = vendor.seed(fake)
    old_token = fake.refresh_token
    vendor.revoke(fake)
    with capture_log(level=logging.INFO) as relay_log:
        async with running(fake) as url:
            block = vendor.block(fake, url, circuit=BREAKER)
            extra = {"admin": {"token": TOKEN}, "alerts": {"interval": "0.1s"}}
            data = config_dict(db_url, {"crm": block}, extra=extra)
            config = write_config(tmp_path / "config.yaml", data)
            async with run_relay(load_config(config, env={})) as relay:
                await post_all(relay, current_inbound_missed("revoked_1", FR_CALLER), "q7m2xk")
                reason = await relay.wait_until(
                    lambda: _held(relay), timeout=30, what="the circuit to open"
                )
                [incident] = await relay.wait_until(
                    lambda: open_incidents(relay, "auth_revoked"), timeout=30, what="the incident"
                )
                await relay.wait_until(lambda: _all_waiting(relay), what="attempts to end")
                await relay.wait_until(lambda: _probed(relay, 2), timeout=30, what="two probes")
                # counted first: a probe is recorded before its token request
                refused = len(fake.tokens.requests)
                probes = await _probed(relay, 0)
                # (an event that needs no request, such as Zoho's live start, succeeds meanwhile);
                # the failures that opened the circuit spent attempts, held ones and probes did not
                rows = await relay.deliveries()  # (a superseded one spent its attempt too)
                assert not [r for r in rows if r.state == "dead"]
                spent = sum(r.attempts for r in rows)
                assert spent <= len(rows) + BREAKER["failures"], [r.attempts for r in rows]
                # one token request per attempt, spent, held or probe: no retry storm (a busy
                # machine lets more attempts start before the open circuit is seen: held ones)
                tries = [a for r in rows for a in await relay.attempts(r.id)]
                held = [a for a in tries if a.outcome == "held"]
                assert 0 < refused <= spent + len(held) + len(probes), (refused, spent, held)
                assert fake.tokens.issued == 0
                assert vendor.all_records(fake) == []
                for text in (reason, incident.summary):
                    assert "refused to issue an access token" in text and "refresh_token" in text
                    assert "`relay reload`" in text and "resume on their own" in text
                    assert "retry the dead" not in text
                assert "`relay circuit close crm`" in reason

                block["refresh_token"] = fake.new_refresh_token()  # the admin authorized the app
                write_config(config, data)
                reloaded = await api(relay, "POST", "/config/reload")
                assert (reloaded["result"], reloaded["changed"]) == ("loaded", ["crm"])
                rows = await relay.settled(timeout=30)
                assert all(r.state in DONE for r in rows), [(r.state, r.last_error) for r in rows]
                await relay.wait_until(
                    lambda: resolved(relay, incident.id), timeout=30, what="the incident resolved"
                )
                await relay.wait_until(  # the circuit_open one too
                    lambda: _none_open(relay), timeout=30, what="no open incident"
                )
                stored = repr([await relay.rows(table) for table in STORED])
    [record] = vendor.records(fake, "revoked_1")
    assert vendor.person(record) == seeded["fr"]
    assert fake.tokens.issued == 1
    logged = relay_log.getvalue()
    assert "new access token" in logged  # the log was captured
    for secret in (old_token, block["refresh_token"], fake.client_secret):
        assert secret not in stored and secret not in logged


async def test_zoho_missing_scope_holds_the_deliveries_without_token_churn(db_url: str) -> None:
    fake = ZOHO.fake()
    ZOHO.seed(fake)
    fake.new_refresh_token(frozenset({"ZohoCRM.modules.contacts.READ", "ZohoCRM.users.READ"}))
    breaker = {"failures": 1, "cool_down": "1h", "max": "1h"}
    async with running(fake) as url:
        settings = make_settings(db_url, {"crm": ZOHO.block(fake, url, circuit=breaker)})
        async with run_relay(settings) as relay:
            # all at once: held deliveries never settle, so nothing can wait for them to
            await post_all(relay, current_outbound("scope_1", UK_CONTACT), "q7m2xk")
            reason = await relay.wait_until(lambda: _held(relay), what="the circuit to open")
            waiting = await relay.wait_until(lambda: _all_waiting(relay), what="attempts to end")
    assert "OAUTH_SCOPE_MISMATCH" in reason and "ZohoCRM.modules.calls.ALL" in reason
    assert waiting and all(r.attempts == 0 for r in waiting)  # held, not dead
    for row in waiting:
        if row.last_error:
            assert "OAUTH_SCOPE_MISMATCH" in row.last_error
            assert "ZohoCRM.modules.calls.ALL" in row.last_error  # what to grant
    assert fake.tokens.issued == 1  # a missing scope is not an expired token: no renewal
    assert fake.calls == {}


async def test_zoho_grant_without_the_users_scope_logs_calls_without_owner(db_url: str) -> None:
    """The owner lookup's missing scope is a 401 too, but only the owner is lost: the call is
    logged (default owner) and the circuit, which rejected credentials open, stays closed."""
    fake = ZOHO.fake()
    seeded = ZOHO.seed(fake)
    fake.new_refresh_token(frozenset({"ZohoCRM.modules.ALL"}))
    breaker = {"failures": 1, "cool_down": "1h", "max": "1h"}
    async with running(fake) as url:
        settings = make_settings(db_url, {"crm": ZOHO.block(fake, url, circuit=breaker)})
        async with run_relay(settings) as relay:
            await post_all(relay, current_outbound("no_owner_1", UK_CONTACT), "q7m2xk")
            rows = await relay.settled()
            circuit = (await relay.store.circuits()).get("crm")
    assert all(r.state in DONE for r in rows), [r.last_error for r in rows]
    assert circuit is None or (not circuit.holds and circuit.failures == 0)
    [record] = ZOHO.records(fake, "no_owner_1")
    assert record.get("Owner") != {"id": seeded["owner"]}  # none: the default owner
    assert [s for _, s, code in fake.log if code == 401]  # the lookup was refused


async def test_salesforce_request_limit_pauses_then_resumes(db_url: str) -> None:
    """The 24-hour limit is spent: the connector pauses (``limit_pause``) and tries again until
    the limit allows requests again. The fake's limit renews only once the test has seen the
    pause, so the pause is certain and the resume follows from it, not from the clock."""
    # no renewal of its own until the test says so; low enough that three calls spend it even
    # when coalescing sends each call's final record only
    fake = SALESFORCE.fake(daily_limit=4)
    SALESFORCE.seed(fake)
    async with running(fake) as url:
        block = SALESFORCE.block(fake, url, limit_pause="0.5s")
        async with run_relay(make_settings(db_url, {"crm": block})) as relay:
            await post_all(relay, day(3), "q7m2xk")
            await relay.wait_until(lambda: paused_attempts(relay), 30, "the connector to pause")
            assert not all(r.state in DONE for r in await relay.deliveries())
            fake.daily.reset_at = time.time()  # the 24 hours have rolled on: requests allowed
            rows = await relay.settled(timeout=60)
            [state] = await relay.rows(connector_state)
            tries = {r.id: await relay.attempts(r.id) for r in rows}
    assert all(r.state in DONE for r in rows)
    assert fake.daily.rejected >= 1
    paused = [a for attempts in tries.values() for a in attempts if a.outcome == "paused"]
    assert paused and all(a.status_code == 403 for a in paused)
    assert "REQUEST_LIMIT_EXCEEDED" in state.pause_reason and "api-usage=4/4" in state.pause_reason
    for row in rows:  # waiting out the limit did not burn attempts
        assert row.attempts == len([a for a in tries[row.id] if a.outcome != "paused"])
    used, limit = (int(n) for n in state.state["api_usage"].split("/"))
    assert limit == 4 and 0 < used <= 4  # Sforce-Limit-Info, kept in the connector state
    for i in range(3):
        assert len(SALESFORCE.records(fake, f"day_{i}")) == 1
    assert len(fake.tasks) == 3


async def test_zoho_429_pauses_then_resumes(db_url: str) -> None:
    """Zoho's 429 names no wait: the connector pauses for ``limit_pause`` and tries again. The
    fake's window is long, so the 429 is certain; it opens once the fake has refused a request
    (settled_opening), so the resume follows from the refusal, not from the clock."""
    fake = ZOHO.fake(limit=3, interval=60.0)
    ZOHO.seed(fake)
    async with running(fake) as url:
        block = ZOHO.block(fake, url, limit_pause="0.5s", rate_limit={"requests": 40, "per": 1})
        async with run_relay(make_settings(db_url, {"crm": block})) as relay:
            await post_all(relay, day(4), "q7m2xk")
            rows = await settled_opening(relay, fake.burst, timeout=60)
            tries = {r.id: await relay.attempts(r.id) for r in rows}
    assert all(r.state in DONE for r in rows)
    assert fake.burst.rejected > 0 and fake.burst.busiest() <= 3
    paused = [a for attempts in tries.values() for a in attempts if a.outcome == "paused"]
    assert paused and all(a.status_code == 429 for a in paused)
    for row in rows:
        assert row.attempts == len([a for a in tries[row.id] if a.outcome != "paused"])
    for i in range(4):
        assert len(ZOHO.records(fake, f"day_{i}")) == 1
    assert len(fake.calls) == 4
