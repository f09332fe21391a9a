"""The Freshdesk connector's own parts: its config checks, `tickets: missed`, the phone search
within Freshdesk's query limit, and a crash between a ticket and its private note — always
against the loopback fake (tests/fakes/freshdesk.py), through the real pipeline where a
delivery is involved."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import yaml
from relay.plugins.freshdesk import search_query, spellings

from relay.config import ConfigError, parse_config
from relay.connector import ConnectorContext, Limiters
from relay.registry import connector_types
from relay.store.records import Store
from tests.support.calls import current_inbound_missed, current_outbound
from tests.support.crm import FR_CALLER, FRESHDESK, UK_CONTACT, post_all, running
from tests.support.relay import DONE, make_settings, run_relay


def connector(block: dict[str, Any]) -> Any:
    text = yaml.safe_dump({"connectors": {"crm": block}})
    inst = parse_config(text, connector_types=connector_types(), env={}).connectors["crm"]
    return inst.cls("crm", inst.options)


BASE = {"type": "freshdesk", "api_key": "k", "domain": "acme", "on_no_match": "skip"}


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({**BASE, "domain": None}, "set `domain`"),
        ({**BASE, "on_no_match": "log_unlinked"}, "set `unlinked_requester`"),
        ({**BASE, "log_internal": True}, "set `unlinked_requester`"),
        ({**BASE, "unlinked_requester": "nobody"}, "must be an email"),
        ({**BASE, "api_key": " "}, "`api_key` is empty"),
        ({**BASE, "priority": 5}, "`priority` is 1"),
        ({**BASE, "missed_status": 1}, "`missed_status`"),
        ({**BASE, "owners": {"a@b.example": "giulia"}}, "agent ids are numbers"),
        ({**BASE, "tickets": "some"}, "tickets"),
    ],
)
def test_config_errors_say_what_to_set(block: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=r"^\$\.connectors\.crm") as info:
        connector(block)
    assert message in str(info.value)


def test_the_domain_names_the_account() -> None:
    assert connector(BASE).config.base_url == "https://acme.freshdesk.com"
    full = connector({**BASE, "domain": "acme.freshdesk.com"})
    assert full.config.base_url == "https://acme.freshdesk.com"


def test_the_search_asks_for_every_usual_spelling_within_the_query_limit() -> None:
    assert spellings(UK_CONTACT) == [
        UK_CONTACT,
        "+44 20 7183 8750",
        "020 7183 8750",
        "02071838750",
        "442071838750",
        "2071838750",
    ]
    assert "(212) 736-5000" in spellings("+12127365000")
    for number in (UK_CONTACT, FR_CALLER, "+4930901820", "+5491123456789"):
        query = search_query(number)
        assert query.startswith('"') and query.endswith('"')
        assert len(query) - 2 <= 512
        assert f"phone:'{number}' OR mobile:'{number}'" in query


async def test_the_fake_refuses_a_query_freshdesk_would_refuse(store: Store) -> None:
    fake = FRESHDESK.fake()
    async with running(fake) as url, httpx.AsyncClient() as http:
        ctx = ConnectorContext(name="crm", http=http, store=store, limiters=Limiters())
        conn = connector(FRESHDESK.block(fake, url))
        for query in ("phone:'1'", '"' + "phone:'1' OR " * 60 + "phone:'2'\""):
            response = await conn.call_api(
                ctx,
                "GET",
                "/api/v2/search/contacts",
                what="s",
                params={"query": query},
                allow=(400,),
            )
            assert response.status_code == 400
            assert response.json()["description"] == "Validation failed"
            assert response.json()["errors"][0]["field"] == "query"
        assert {"x-ratelimit-total", "x-ratelimit-remaining"} <= set(response.headers)


async def test_tickets_missed_raises_only_the_missed_inbound_call(db_url: str) -> None:
    fake = FRESHDESK.fake()
    seeded = FRESHDESK.seed(fake)
    async with running(fake) as url:
        block = FRESHDESK.block(fake, url, tickets="missed", group_id=7001, tags=["phone"])
        async with run_relay(make_settings(db_url, {"crm": block})) as relay:
            await post_all(relay, current_outbound("fd_out", UK_CONTACT), "q7m2xk")
            await post_all(relay, current_inbound_missed("fd_missed", FR_CALLER), "q7m2xk")
            rows = await relay.settled()
    assert all(r.state in DONE for r in rows)
    assert FRESHDESK.records(fake, "fd_out") == []
    [ticket] = FRESHDESK.all_records(fake)
    assert FRESHDESK.records(fake, "fd_missed") == [ticket]
    assert str(ticket["requester_id"]) == seeded["fr"]
    assert (ticket["status"], ticket["group_id"]) == (2, 7001)
    assert ticket["tags"][0] == "phone" and ticket["tags"][1].startswith("wx")
    assert [e for e in fake.log if e[0] == "POST" and e[1] == "/api/v2/tickets"] == [
        ("POST", "/api/v2/tickets", 201)
    ]
    # the ticket was created by this attempt: its note is added without looking for one first
    assert [e for e in fake.log if e[1].endswith("/conversations")] == []
    assert [e[:2] for e in fake.log if e[1].endswith("/notes")] == [
        ("POST", f"/api/v2/tickets/{ticket['id']}/notes")
    ]


async def test_a_crash_between_the_ticket_and_its_note_leaves_one_of_each(db_url: str) -> None:
    """The note was stored but its answer was a 500: the retry finds the ticket by its tag and
    the note by its marker, and brings the note up to date instead of adding another."""
    fake = FRESHDESK.fake()
    FRESHDESK.seed(fake)
    fake.note_faults.set("500")
    async with running(fake) as url:
        settings = make_settings(db_url, {"crm": FRESHDESK.block(fake, url)})
        async with run_relay(settings) as relay:
            await post_all(relay, current_inbound_missed("fd_crash", FR_CALLER), "q7m2xk")
            rows = await relay.settled()
    assert all(r.state in DONE for r in rows)
    assert fake.note_faults.hit.is_set()
    [ticket] = FRESHDESK.all_records(fake)
    [note] = ticket["conversations"]
    assert note["private"] and "Wildix call fd_crash" in note["body"]
    assert FRESHDESK.seconds(ticket) == 28  # the final record's 28.313 s
    paths = [(method, path) for method, path, _ in fake.log]
    assert paths.count(("POST", "/api/v2/tickets")) == 1
    assert ("GET", "/api/v2/tickets") in paths  # the ticket found again by its tag
    assert ("GET", f"/api/v2/tickets/{ticket['id']}/conversations") in paths
