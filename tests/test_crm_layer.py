"""The shared CRM layer's parts on their own: phone normalisation and matching, owner mapping,
merging events into one snapshot, quota resets, config validation."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import pytest
import yaml

from relay import AuthError, PauseConnector, PermanentError, RetryableError, crm
from relay.config import ConfigError, parse_config
from relay.connector import ConnectorContext, Limiters
from relay.registry import connector_types
from relay.store.records import Store
from relay.wildix import parse
from relay.wildix.views import Party
from tests.fakes.receiver import Receiver
from tests.support.calls import current_outbound, legacy
from tests.support.crm import UK_CONTACT


def test_to_e164_normalises_national_international_and_rejects_extensions() -> None:
    assert crm.to_e164("020 7183 8750", "GB") == UK_CONTACT
    assert crm.to_e164("0044 20 7183 8750", None) == UK_CONTACT
    assert crm.to_e164("+44 (0)20 7183 8750", None) == UK_CONTACT
    assert crm.to_e164("020 7183 8750", None) is None  # national, and no region to read it
    assert crm.to_e164("214", "GB") is None  # an extension is never looked up
    assert crm.to_e164("not a number", "GB") is None
    assert crm.national_digits(UK_CONTACT) == "2071838750"


def test_pick_confirms_locally_and_prefers_contacts() -> None:
    lead = crm.Person(id="L1", kind="lead", phones=["+44 20 7183 8750"])
    near = crm.Person(id="C0", phones=["+44 20 7183 8751"])  # what a fuzzy CRM search returns
    contact = crm.Person(id="C1", phones=["07000 000000", "020 7183 8750"])
    assert crm.pick(UK_CONTACT, [near, lead, contact], "GB") is contact
    assert crm.pick(UK_CONTACT, [near, lead], "GB") is lead
    assert crm.pick(UK_CONTACT, [near], "GB") is None


async def test_matcher_caches_hits_and_misses() -> None:
    searched: list[str] = []

    async def search(number: str) -> list[crm.Person]:
        searched.append(number)
        return [crm.Person(id="C1", phones=["020 7183 8750"])] if number == UK_CONTACT else []

    matcher = crm.PhoneMatcher(ttl=60)
    for _ in range(3):
        assert (await matcher.match(UK_CONTACT, search, "GB")).id == "C1"
        assert await matcher.match("+33142685300", search, "GB") is None
    assert searched == [UK_CONTACT, "+33142685300"]
    concurrent = await asyncio.gather(
        *(matcher.match("+4930123456", search, "GB") for _ in range(5))
    )
    assert concurrent == [None] * 5 and searched.count("+4930123456") == 1  # one shared search


async def test_owner_mapping_explicit_then_lookup_then_default() -> None:
    asked: list[str] = []

    async def find(email: str) -> str | None:
        asked.append(email)
        return "77" if email == "marco@example.org" else None

    owners = crm.OwnerMapper({"214": 11, "Anna@Example.org": "12"}, "99", lookup=True, ttl=60)
    assert await owners.owner_for(Party(kind="local", extension="214"), find) == "11"
    assert await owners.owner_for(Party(kind="local", email="anna@example.org"), find) == "12"
    for _ in range(2):
        marco = Party(kind="local", email="Marco@example.org")
        assert await owners.owner_for(marco, find) == "77"
    assert await owners.owner_for(Party(kind="local", email="x@example.org"), find) == "99"
    assert await owners.owner_for(None, find) == "99"
    assert asked == ["marco@example.org", "x@example.org"]  # cached, and explicit wins first
    no_lookup = crm.OwnerMapper({}, None, lookup=False, ttl=60)
    assert await no_lookup.owner_for(Party(kind="local", email="marco@example.org"), find) is None


def _merged(events: list[bytes]) -> crm.Facts:
    facts = crm.Facts(call_id="m1")
    for body in events:
        event = parse(body)
        assert event.call is not None
        facts = crm.facts.merge(facts, event.call, None, event.time)
    return facts


def test_merge_is_order_independent_for_the_final_record_and_idempotent() -> None:
    bodies = [b for _, b in current_outbound("m1", UK_CONTACT)]
    start, update, end, record = bodies
    in_order = _merged([start, update, end, record])
    record_first = _merged([start, update, record, end])
    assert in_order == record_first
    assert in_order.status == "completed" and in_order.duration == 180.602
    assert _merged([start, update, update, end, end]) == _merged([start, update, end])
    live_only = _merged([start, update, end])
    assert live_only.status == "completed"  # answered (the update saw TALKING), no record yet
    assert live_only.total_seconds == pytest.approx(180.6, abs=0.1)
    assert not live_only.final and in_order.final
    assert _merged([start]).status == "in_progress"
    unanswered = _merged([b for _, b in current_outbound("m1", UK_CONTACT, answered=False)][:3])
    assert unanswered.status == "missed"


def test_legacy_end_is_final_and_uses_event_times() -> None:
    facts = _merged([b for _, b in legacy("m1", UK_CONTACT)])
    assert facts.final and facts.status == "completed"
    assert facts.total_seconds == 125
    internal = _merged([b for _, b in legacy("m1", None)])
    assert crm.facts.wanted(internal, log_internal=False) is False
    assert crm.facts.wanted(internal, log_internal=True) is True
    assert crm.facts.wanted(_merged([b for _, b in legacy("m1", None)][:1]), False) is None


def test_next_reset_is_the_next_local_time_of_day() -> None:
    now = datetime(2026, 3, 10, 22, 30, tzinfo=UTC)
    assert crm.next_reset("00:00", "UTC", now) == datetime(2026, 3, 11, tzinfo=UTC)
    # midnight in New York (EDT since 8 March) is 04:00 UTC
    assert crm.next_reset("00:00", "America/New_York", now) == datetime(2026, 3, 11, 4, tzinfo=UTC)
    assert crm.next_reset("23:00", "UTC", now) == datetime(2026, 3, 10, 23, tzinfo=UTC)


def test_marker_is_one_alphanumeric_token_per_call_and_leg() -> None:
    a, b = crm.marker("q7m2xk", "c1"), crm.marker("q7m2xk", "c1", 1)
    assert a.isalnum() and a.startswith("wx") and len(a) == 26
    assert a != b and a == crm.marker("q7m2xk", "c1")


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"type": "hubspot", "token": "t", "default_region": "XX"}, "default_region"),
        ({"type": "hubspot", "token": "t", "timezone": "Mars/Base"}, "timezone"),
        ({"type": "hubspot", "token": "t", "title": "{% if %}"}, "`title`: template error"),
        ({"type": "hubspot", "token": "t", "on_no_match": "guess"}, "on_no_match"),
        ({"type": "hubspot", "token": "t", "daily_reset": "25:00"}, "daily_reset"),
        ({"type": "hubspot"}, "token"),
        ({"type": "pipedrive", "api_token": "a", "access_token": "b"}, "exactly one"),
        ({"type": "pipedrive", "api_token": "a", "owners": {"x@y.z": "bob"}}, "numbers"),
        ({"type": "pipedrive", "api_token": "a", "rate_limit": {"requests": 0}}, "rate"),
    ],
)
def test_config_errors_name_the_connector(block: dict, message: str) -> None:
    text = yaml.safe_dump({"connectors": {"crm": block}})
    with pytest.raises(ConfigError, match=r"^\$\.connectors\.crm") as info:
        parse_config(text, connector_types=connector_types(), env={})
    assert message in str(info.value)


def test_pipedrive_base_url_follows_the_company_domain() -> None:
    def options(**extra: str) -> object:
        text = yaml.safe_dump(
            {"connectors": {"p": {"type": "pipedrive", "api_token": "a", **extra}}}
        )
        return parse_config(text, connector_types=connector_types(), env={}).connectors["p"].options

    assert options().base_url == "https://api.pipedrive.com"
    assert options(company_domain="acme").base_url == "https://acme.pipedrive.com"
    assert options(base_url="http://127.0.0.1:9/").base_url == "http://127.0.0.1:9"


class OAuthCrm(crm.CrmConnector):
    """What an OAuth CRM (part 2: Salesforce, Zoho) does with the hooks: token and API root in
    the connector state, one refresh on a 401."""

    type = "oauthcrm"
    vendor = "OAuth CRM"

    async def auth_headers(self, ctx: ConnectorContext) -> dict[str, str]:
        return {"authorization": f"Bearer {(await ctx.state.get()).get('token', 't0')}"}

    async def api_root(self, ctx: ConnectorContext) -> str:
        return (await ctx.state.get()).get("root") or str(self.config.base_url)

    async def refresh_auth(self, ctx: ConnectorContext) -> bool:
        state = await ctx.state.get()
        n = state.get("refreshes", 0) + 1
        await ctx.state.update(token=f"t{n}", refreshes=n, root=state.get("next_root"))
        return True


async def test_token_refresh_hook_retries_once_with_the_new_token_and_root(store: Store) -> None:
    async with Receiver() as old, Receiver() as new, httpx.AsyncClient() as http:
        conn = OAuthCrm("o", crm.CrmConfig(base_url=old.url))
        ctx = ConnectorContext(name="o", http=http, store=store, limiters=Limiters())
        await ctx.state.update(next_root=new.url)
        old.respond(401, body='{"error": "expired"}')
        new.respond(200, body='{"ok": true}', headers={"content-type": "application/json"})
        response = await conn.call_api(ctx, "GET", "/things", what="list things")
        assert response.json() == {"ok": True}
        assert old.requests[0].headers["authorization"] == "Bearer t0"
        assert new.requests[0].headers["authorization"] == "Bearer t1"
        assert new.requests[0].path == "/things"
        new.respond(401, times=2)  # refreshed, and still refused: an AuthError, after one refresh
        with pytest.raises(AuthError, match=r"OAuth CRM list things: .*rejected the credentials"):
            await conn.call_api(ctx, "GET", "/things", what="list things")
        assert len(new.requests) == 3
        assert (await ctx.state.get())["refreshes"] == 2


async def test_rate_limit_answers_map_to_retry_and_pause(store: Store) -> None:
    class Daily(crm.CrmConnector):
        type = "dailycrm"

        def rate_limited(self, response: httpx.Response) -> crm.Limited | None:
            if response.status_code == 429 and b"daily" in response.content:
                return crm.Limited(True, None, "daily quota")
            return super().rate_limited(response)

    async with Receiver() as api, httpx.AsyncClient() as http:
        conn = Daily(
            "d", crm.CrmConfig(base_url=api.url, daily_reset="06:30", timezone="Europe/Rome")
        )
        ctx = ConnectorContext(name="d", http=http, store=store, limiters=Limiters())
        api.respond(429, headers={"retry-after": "7"})
        with pytest.raises(RetryableError) as burst:
            await conn.call_api(ctx, "POST", "/x", what="create")
        assert burst.value.retry_after == 7 and burst.value.status_code == 429
        api.respond(429, body="daily")
        with pytest.raises(PauseConnector, match="paused until") as daily:
            await conn.call_api(ctx, "POST", "/x", what="create")
        assert daily.value.until == crm.next_reset("06:30", "Europe/Rome")
        api.respond(404, body="gone")
        assert (await conn.call_api(ctx, "GET", "/x", what="read", allow=(404,))).status_code == 404
        api.respond(400, body="bad field")
        with pytest.raises(PermanentError, match="create: HTTP 400 bad field"):
            await conn.call_api(ctx, "POST", "/x", what="create")


def test_pick_reads_a_national_number_in_the_callers_country_first() -> None:
    french = crm.Person(id="FR", phones=["06 12 34 56 78"])
    italian = crm.Person(id="IT", phones=["+39 612 345 678"])
    assert crm.pick("+33612345678", [italian, french], None) is french
    assert crm.pick("+393123456789", [crm.Person(id="I2", phones=["312 345 6789"])], None)
    assert crm.pick("+33612345678", [italian], "IT") is None  # full E.164 equality, always
    assert crm.pick("+442071838750", [crm.Person(id="G", phones=["020 7183 8750"])], "FR")
