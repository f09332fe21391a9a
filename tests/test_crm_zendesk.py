"""What only the Zendesk connector does, beyond the CRM scenarios every CRM passes
(tests/test_crm_scenarios.py): which calls open a ticket, the missed-call group, Zendesk's 422
details in the error, an OAuth bearer token, `check` refusing an end user, and config errors.
Through the real pipeline against the loopback Zendesk where a delivery is involved."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from relay import PermanentError
from relay.connector import ConnectorContext, Limiters
from relay.store.records import Store
from tests.fakes.zendesk import API_USER_ID
from tests.support.calls import current_inbound_missed, current_outbound, legacy
from tests.support.connectors import build, config_error
from tests.support.crm import (
    FR_CALLER,
    UK_CONTACT,
    ZENDESK,
    day,
    post_all,
    running,
    settled_opening,
)
from tests.support.relay import DONE, make_settings, run_relay


async def test_only_the_chosen_calls_open_tickets_and_missed_ones_go_to_their_group(
    db_url: str,
) -> None:
    fake = ZENDESK.fake()
    seeded = ZENDESK.seed(fake)
    callback, sales = fake.add_group("Call-back"), fake.add_group("Sales", seeded["owner"])
    options = {
        "tickets_for": ["inbound_missed", "inbound_answered"],
        "missed_call_group_id": callback,
        "group_id": sales,
        "tags": ["pbx", "wildix"],
    }
    async with running(fake) as url:
        block = ZENDESK.block(fake, url, **options)
        async with run_relay(make_settings(db_url, {"crm": block})) as relay:
            await post_all(relay, current_inbound_missed("zd_missed", FR_CALLER), "q7m2xk")
            await post_all(relay, current_outbound("zd_out", UK_CONTACT), "q7m2xk")
            answered = legacy("zd_in", FR_CALLER, direction="inbound", answered=True)
            await post_all(relay, answered, "h3p9ta")
            rows = await relay.settled()
    assert all(r.state in DONE for r in rows)
    assert ZENDESK.records(fake, "zd_out") == []  # outbound calls are not in tickets_for
    [other] = ZENDESK.records(fake, "zd_in")
    assert (other["group_id"], str(other["assignee_id"])) == (sales, seeded["owner"])
    assert ZENDESK.outcome(other) == "call_answered"
    [ticket] = ZENDESK.records(fake, "zd_missed")
    assert len(fake.tickets) == 2
    assert ticket["group_id"] == callback
    assert ticket["assignee_id"] is None  # not the agent who missed it: the group calls back
    assert str(ticket["requester_id"]) == seeded["fr"]
    assert {"pbx", "wildix", "call_missed", "call_inbound"} <= set(ticket["tags"])
    creates = [e for e in fake.log if e[:2] == ("POST", "/api/v2/tickets")]
    assert creates == [("POST", "/api/v2/tickets", 201)] * 2
    searches = [e for e in fake.log if e[1] == "/api/v2/search"]
    assert len(searches) == 1  # one caller, cached; the outbound call skipped before any lookup


async def test_a_refused_field_is_named_in_the_dead_delivery(db_url: str) -> None:
    """A group id that does not exist: Zendesk's 422 RecordInvalid names the field."""
    fake = ZENDESK.fake()
    ZENDESK.seed(fake)
    async with running(fake) as url:
        block = ZENDESK.block(fake, url, missed_call_group_id=4242)
        async with run_relay(make_settings(db_url, {"crm": block})) as relay:
            await post_all(relay, current_inbound_missed("zd_422", FR_CALLER), "q7m2xk")
            rows = await relay.settled()
    dead = [r for r in rows if r.state == "dead"]
    assert dead and all(r.attempts == 1 for r in dead)  # a refusal is not retried
    assert "HTTP 422 RecordInvalid (group: Group: is invalid)" in dead[0].last_error
    assert fake.tickets == {}


async def test_an_oauth_access_token_is_sent_as_a_bearer(store: Store) -> None:
    fake = ZENDESK.fake(bearer="oauth-access-token-1")
    async with running(fake) as url, httpx.AsyncClient() as http:
        ctx = ConnectorContext(name="crm", http=http, store=store, limiters=Limiters())
        block = {"type": "zendesk", "base_url": url, "access_token": "oauth-access-token-1"}
        await build(block, "crm").check(ctx)
        fake.users[API_USER_ID]["role"] = "end-user"  # the token's user lost the agent role
        with pytest.raises(PermanentError, match="end-user, not an agent or admin"):
            await build(block, "crm").check(ctx)
    assert [status for _, _, status in fake.log] == [200, 200]


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"api_token": "t", "email": "a@b.example"}, "set `subdomain`"),
        ({"subdomain": "acme.zendesk.com", "access_token": "t"}, "set `subdomain`"),
        ({"subdomain": "acme", "api_token": "t"}, "`api_token` needs `email`"),
        ({"subdomain": "acme", "api_token": "t", "access_token": "u"}, "exactly one of"),
        ({"subdomain": "acme", "access_token": "t", "tickets_for": []}, "`tickets_for` is empty"),
        ({"subdomain": "acme", "access_token": "t", "tickets_for": ["voicemail"]}, "voicemail"),
        ({"subdomain": "acme", "access_token": "t", "tags": ["two words"]}, "single words"),
        ({"subdomain": "acme", "access_token": "t", "owners": {"214": "giulia"}}, "numbers"),
    ],
)
def test_config_errors_say_what_to_set(block: dict[str, Any], message: str) -> None:
    error = config_error({"type": "zendesk", **block})
    assert message in error
    assert "`t`" not in error and "'t'" not in error  # a token is never echoed


def test_the_subdomain_names_the_account() -> None:
    conn = build({"type": "zendesk", "subdomain": "Acme", "email": "a@b.example", "api_token": "t"})
    assert conn.config.base_url == "https://acme.zendesk.com"


async def test_the_update_ticket_limit_is_waited_out(db_url: str) -> None:
    """Update Ticket has its own account-wide limit, besides the account's: its 429 is retried
    after the Retry-After, and every call still has one ticket with one update. The window is
    a minute long, so the 429 is certain however slow the machine; its Retry-After still says
    1 s, and the window opens once the fake has refused (settled_opening), not by the clock."""
    fake = ZENDESK.fake(update_limit=1, interval=60.0)
    fake.update.announce = 0.5  # Retry-After: max(1, round(reset_in + 0.5)) = 1 s
    ZENDESK.seed(fake)
    async with running(fake) as url:
        block = ZENDESK.block(fake, url, delivery={"max_attempts": 30})
        async with run_relay(make_settings(db_url, {"crm": block})) as relay:
            calls = day(4)  # the live events first (a ticket each), then the final records at once
            await post_all(relay, [e for e in calls if e[0] != "record"], "q7m2xk")
            await settled_opening(relay, fake.update, timeout=90)
            await post_all(relay, [e for e in calls if e[0] == "record"], "q7m2xk")
            rows = await settled_opening(relay, fake.update, timeout=90)
            tries = [a for r in rows for a in await relay.attempts(r.id)]
    assert all(r.state in DONE for r in rows)
    assert fake.update.rejected > 0 and fake.update.busiest() <= 1
    limited = [a for a in tries if a.status_code == 429]
    assert limited and all(a.outcome == "retry" for a in limited)
    for i in range(4):
        [ticket] = ZENDESK.records(fake, f"day_{i}")
        assert ticket["updates"] == 1
