"""The CRMs as the tests see them, one entry each in ``CRMS``: the fake, how an admin
configures it, the contacts every scenario expects, and how to read the records it holds. One
scenario test runs against all of them; a new CRM is one more entry.

Also the steps the CRM tests share: serving a fake, posting a call's events, re-sent events, a
day of calls, the links relay keeps and an operator's Retry."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import msgspec

from relay.admin import actions
from relay.store.tables import links
from tests.fakes.dynamics import FakeDynamics
from tests.fakes.freshdesk import FakeFreshdesk
from tests.fakes.hubspot import FakeHubSpot
from tests.fakes.pipedrive import FakePipedrive
from tests.fakes.salesforce import TEST_KEY_PEM, FakeSalesforce
from tests.fakes.server import serve
from tests.fakes.zendesk import API_USER_ID, FakeZendesk
from tests.fakes.zoho import FakeZoho
from tests.support.calls import Events, current_inbound_missed, current_outbound
from tests.support.relay import SETTLED, RunningRelay

UK_CONTACT = "+442071838750"  # the outbound fixture's callee
FR_CALLER = "+33142685300"  # the missed inbound fixture's caller
AGENT_EMAIL = "giulia.rossi@example.org"
UNLINKED_REQUESTER = "unknown.caller@example.org"  # Freshdesk: raises unknown callers' tickets
FRESHDESK_STATUS = {2: "Open", 3: "Pending", 4: "Resolved", 5: "Closed"}
FLOWS = ("client_credentials", "jwt_bearer", "refresh_token")  # Salesforce's OAuth flows

Record = dict[str, Any]


@cache
def key_file() -> str:
    """The test private key as an admin would keep it: a PEM file."""
    path = Path(tempfile.mkdtemp(prefix="relay_sf_")) / "salesforce.key"
    path.write_text(TEST_KEY_PEM)
    return str(path)


@dataclass(frozen=True)
class Vendor:
    """One CRM: everything a scenario needs to drive its fake and read what it holds."""

    name: str
    make_fake: Callable[..., Any]
    credentials: Callable[[Any, str, str], dict[str, Any]]  # (fake, url, flow) → block's start
    limits: dict[str, Any]  # rate limits the block sets, as an admin would for the account
    seed: Callable[[Any], dict[str, str]]  # the "uk" contact, the "fr" caller, the "owner"
    records: Callable[[Any, str], list[Record]]  # the records of one Wildix call
    records_of: Callable[[Any], Iterable[Record]]  # every call record the fake holds
    record_id: Callable[[Record], str]
    person: Callable[[Record], str | None]  # the contact, person or lead the record is on
    seconds: Callable[[Record], float]
    outcome: Callable[[Record], str]
    notes: Callable[[Record], str]  # the record's text: who, when, recording, the Wildix call
    contacts_with: Callable[[Any, str], list[str]]  # ids of the contacts holding this number
    outcomes: dict[str, str]  # normalized outcome ("completed", "missed") → what the CRM shows
    create_path: str  # the request path that creates a call record
    updates: bool  # can create the record at the first event (`create_at: start`) and update it
    # a contact holding this number (bench.crm_day seeds a day's contacts), and a CRM user
    add_person: Callable[[Any, str, str], str] = lambda fake, number, name: str(
        fake.add_contact(number, *name.split(" ", 1))
    )
    add_owner: Callable[[Any, str], str] = lambda fake, email: str(fake.add_user(email, "Giulia"))
    token_key: str | None = None  # the config key of a static API token; None: OAuth
    milliseconds: bool = False  # durations kept to the millisecond (else whole seconds)
    flow: str = ""  # the OAuth flow (Salesforce has several)
    daily_quota: bool = True  # the CRM has a daily request quota (Zendesk, Freshdesk: none)

    @property
    def oauth(self) -> bool:
        return self.token_key is None

    @property
    def label(self) -> str:
        return f"{self.name}-{self.flow}" if self.flow else self.name

    def with_flow(self, flow: str) -> Vendor:
        return dataclasses.replace(self, flow=flow)

    def fake(self, **options: Any) -> Any:
        return self.make_fake(**options)

    def block(self, fake: Any, url: str, **extra: Any) -> dict[str, Any]:
        """The connector's config block, as an admin writes it in config.yaml."""
        base = self.credentials(fake, url, self.flow)
        return {**base, **self.limits, "default_region": "GB", **extra}

    def kept_seconds(self, ms: int) -> float:
        """What ``seconds`` reads back for a call of ``ms`` milliseconds."""
        return ms / 1000 if self.milliseconds else round(ms / 1000)

    def all_records(self, fake: Any) -> list[Record]:
        return list(self.records_of(fake))

    def expire_tokens(self, fake: Any) -> None:
        """A session timeout: every access token dies at once."""
        fake.tokens.expire_all()

    def revoke(self, fake: Any) -> None:
        fake.tokens.revoke(fake.refresh_token)


def _salesforce_credentials(fake: Any, url: str, flow: str) -> dict[str, Any]:
    base = {"type": "salesforce", "client_id": fake.client_id, "login_url": url}
    if flow == "jwt_bearer":
        return base | {"username": fake.username, "private_key_file": key_file()}
    if flow == "refresh_token":
        return base | {"client_secret": fake.client_secret, "refresh_token": fake.refresh_token}
    return base | {"client_secret": fake.client_secret}


def _zoho_person(record: Record) -> str | None:
    ref = record.get("Who_Id") or record.get("What_Id")
    return ref["id"] if ref else None


def _freshdesk_seconds(ticket: Record) -> int:
    """The duration the private note states (``When: …, 3:01``): a ticket has no such field."""
    found = re.search(r"When: [^,<]*, (\d+:\d\d)\b", _freshdesk_notes(ticket))
    assert found, "the ticket's note states no duration"
    return _mm_ss(found[1])


def _freshdesk_notes(ticket: Record) -> str:
    return "\n".join(note["body"] for note in ticket["conversations"] if note["private"])


def _mm_ss(text: str) -> int:
    minutes, seconds = text.split(":")
    return int(minutes) * 60 + int(seconds)


HUBSPOT = Vendor(
    name="hubspot",
    make_fake=FakeHubSpot,
    credentials=lambda fake, url, _: {
        "type": "hubspot",
        "token": fake.token,
        "index_lag": 0,
        "base_url": url,
    },
    limits={
        "rate_limit": {"requests": 50, "per": 1},
        "search_rate_limit": {"requests": 5, "per": 1},
    },
    seed=lambda fake: {  # typed the way humans do
        "uk": fake.add_contact("020 7183 8750", "Olivia", "Hart"),
        "fr": fake.add_contact("+33 1 42 68 53 00", "Luc", "Moreau"),
        "owner": fake.add_owner(AGENT_EMAIL, "Giulia"),
    },
    records=lambda fake, call_id: fake.calls_for(call_id),
    records_of=lambda fake: fake.calls.values(),
    record_id=lambda record: str(record["id"]),
    person=lambda record: record["contacts"][0] if record["contacts"] else None,
    seconds=lambda record: int(record["properties"]["hs_call_duration"]) / 1000,
    outcome=lambda record: record["properties"]["hs_call_status"],
    notes=lambda record: record["properties"]["hs_call_body"],
    contacts_with=lambda fake, number: [
        cid for cid, contact in fake.contacts.items() if contact["phone"] == number
    ],
    outcomes={"completed": "COMPLETED", "missed": "NO_ANSWER"},
    create_path="/crm/v3/objects/calls",
    updates=True,
    add_owner=lambda fake, email: fake.add_owner(email, "Giulia"),
    token_key="token",
    milliseconds=True,
)
PIPEDRIVE = Vendor(
    name="pipedrive",
    make_fake=FakePipedrive,
    credentials=lambda fake, url, _: {
        "type": "pipedrive",
        "api_token": fake.api_token,
        "base_url": url,
    },
    limits={
        "rate_limit": {"requests": 50, "per": 2},
        "search_rate_limit": {"requests": 10, "per": 2},
    },
    seed=lambda fake: {
        "uk": str(fake.add_person("Olivia Hart", "020 7183 8750")),
        "fr": str(fake.add_person("Luc Moreau", "+33 1 42 68 53 00")),
        "owner": str(fake.add_user(AGENT_EMAIL, "Giulia Rossi")),
    },
    records=lambda fake, call_id: fake.logs_for(call_id),
    records_of=lambda fake: fake.call_logs.values(),
    record_id=lambda record: str(record["id"]),
    person=lambda record: None if record["person_id"] is None else str(record["person_id"]),
    seconds=lambda record: int(record["duration"]),
    outcome=lambda record: record["outcome"],
    notes=lambda record: record["note"],
    contacts_with=lambda fake, number: [
        str(person["id"]) for person in fake.persons.values() if person["phones"] == [number]
    ],
    outcomes={"completed": "connected", "missed": "no_answer"},
    create_path="/v1/callLogs",
    updates=False,  # a call log cannot be updated: written once, from the final data
    add_person=lambda fake, number, name: str(fake.add_person(name, number)),
    token_key="api_token",
)
SALESFORCE = Vendor(
    name="salesforce",
    make_fake=FakeSalesforce,
    credentials=_salesforce_credentials,
    limits={
        "rate_limit": {"requests": 50, "per": 1},
        "search_rate_limit": {"requests": 20, "per": 1},
    },
    seed=lambda fake: {  # a contact typed nationally, a lead typed internationally
        "uk": fake.add_contact("020 7183 8750", "Olivia", "Hart"),
        "fr": fake.add_lead("+33 1 42 68 53 00", "Luc", "Moreau"),
        "owner": fake.add_user(AGENT_EMAIL, "Giulia Rossi"),
    },
    records=lambda fake, call_id: fake.tasks_for(call_id),
    records_of=lambda fake: fake.tasks.values(),
    record_id=lambda record: str(record["Id"]),
    person=lambda record: record.get("WhoId"),
    seconds=lambda record: int(record["CallDurationInSeconds"]),
    outcome=lambda record: record["CallDisposition"],
    notes=lambda record: record["Description"],
    contacts_with=lambda fake, number: [
        cid for cid, contact in fake.contacts.items() if contact["Phone"] == number
    ],
    outcomes={"completed": "Answered", "missed": "No answer"},
    create_path="/Task",
    updates=True,
    flow="",  # client_credentials; TOKEN_VENDORS has each flow
)
ZOHO = Vendor(
    name="zoho",
    make_fake=FakeZoho,
    credentials=lambda fake, url, _: {
        "type": "zoho",
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "refresh_token": fake.refresh_token,
        "accounts_url": url,
        "index_lag": 0,
    },
    limits={
        "rate_limit": {"requests": 50, "per": 1},
        "search_rate_limit": {"requests": 20, "per": 1},
    },
    seed=SALESFORCE.seed,
    records=lambda fake, call_id: fake.calls_for(call_id),
    records_of=lambda fake: fake.calls.values(),
    record_id=lambda record: str(record["id"]),
    person=_zoho_person,
    seconds=lambda record: _mm_ss(record["Call_Duration"]),
    # an outbound call's status, else its type (Missed): Zoho has no one outcome field
    outcome=lambda record: record.get("Outgoing_Call_Status") or record["Call_Type"],
    notes=SALESFORCE.notes,
    contacts_with=SALESFORCE.contacts_with,
    outcomes={"completed": "Completed", "missed": "Missed"},
    create_path="/Calls",
    updates=False,  # Call_Type cannot change once created: written at the end
)


def _dynamics_person(record: Record) -> str | None:
    for kind in ("contact", "lead"):
        bind = record.get(f"regardingobjectid_{kind}@odata.bind")
        if bind:
            return re.sub(r"^/\w+\((.*)\)$", r"\1", bind)
    return None


def _dynamics_seconds(record: Record) -> float:
    start, end = (datetime.fromisoformat(record[k]) for k in ("actualstart", "actualend"))
    return (end - start).total_seconds()


DYNAMICS = Vendor(
    name="dynamics",
    make_fake=FakeDynamics,
    credentials=lambda fake, url, _: {
        "type": "dynamics",
        "url": url,
        "login_url": url,
        "tenant_id": fake.tenant_id,
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
    },
    limits={
        "rate_limit": {"requests": 50, "per": 1},
        "search_rate_limit": {"requests": 20, "per": 1},
    },
    seed=SALESFORCE.seed,  # a contact typed nationally, a lead typed internationally
    records=lambda fake, call_id: fake.calls_for(call_id),
    records_of=lambda fake: fake.phonecalls.values(),
    record_id=lambda record: str(record["activityid"]),
    person=_dynamics_person,
    seconds=_dynamics_seconds,  # actualend - actualstart (actualdurationminutes is in minutes)
    outcome=lambda record: record["category"],
    notes=lambda record: record["description"],
    contacts_with=lambda fake, number: [
        cid for cid, contact in fake.contacts.items() if contact["telephone1"] == number
    ],
    outcomes={"completed": "Answered", "missed": "Missed"},
    create_path="/phonecalls",
    updates=True,
)


def _zendesk_outcome(record: Record) -> str:
    [tag] = [t for t in record["tags"] if t.startswith("call_") and t[5:] in ZENDESK_OUTCOMES]
    return tag


def _zendesk_seconds(record: Record) -> int:
    *_, voice = (c for c in record["comments"] if c["type"] == "VoiceComment")
    return int(voice["data"]["call_duration"])


ZENDESK_OUTCOMES = ("answered", "missed", "busy", "failed")
ZENDESK = Vendor(
    name="zendesk",
    make_fake=FakeZendesk,
    credentials=lambda fake, url, _: {
        "type": "zendesk",
        "email": fake.email,
        "api_token": fake.api_token,
        "base_url": url,
        "index_lag": 0,
    },
    limits={
        "rate_limit": {"requests": 50, "per": 1},
        "search_rate_limit": {"requests": 20, "per": 1},
    },
    seed=lambda fake: {
        "uk": fake.add_contact("020 7183 8750", "Olivia", "Hart"),
        "fr": fake.add_contact("+33 1 42 68 53 00", "Luc", "Moreau"),
        "owner": fake.add_agent(AGENT_EMAIL, "Giulia Rossi"),
    },
    records=lambda fake, call_id: fake.tickets_for(call_id),
    records_of=lambda fake: fake.tickets.values(),
    record_id=lambda record: str(record["id"]),
    # no requester given: Zendesk makes the API user the requester
    person=lambda record: (
        None if record["requester_id"] == API_USER_ID else str(record["requester_id"])
    ),
    seconds=_zendesk_seconds,
    outcome=_zendesk_outcome,
    notes=lambda record: "\n".join(c["body"] for c in record["comments"]),
    contacts_with=lambda fake, number: [
        str(uid) for uid, user in fake.contacts.items() if user["phone"] == number
    ],
    outcomes={"completed": "call_answered", "missed": "call_missed"},
    create_path="/api/v2/tickets",
    updates=False,  # a ticket is opened when the call has ended (a note added after)
    add_owner=lambda fake, email: fake.add_agent(email, "Giulia Rossi"),
    token_key="api_token",
    daily_quota=False,
)

FRESHDESK = Vendor(
    name="freshdesk",
    make_fake=FakeFreshdesk,
    credentials=lambda fake, url, _: {
        "type": "freshdesk",
        "api_key": fake.api_key,
        "base_url": url,
        "unlinked_requester": UNLINKED_REQUESTER,
        "index_lag": 0,
    },
    limits={
        "rate_limit": {"requests": 50, "per": 1},
        "search_rate_limit": {"requests": 10, "per": 1},
    },
    seed=lambda fake: {  # a phone typed nationally, a mobile typed internationally
        "uk": fake.add_contact("020 7183 8750", "Olivia", "Hart"),
        "fr": fake.add_contact("+33 1 42 68 53 00", "Luc", "Moreau", mobile=True),
        "owner": fake.add_agent(AGENT_EMAIL, "Giulia Rossi"),
    },
    records=lambda fake, call_id: fake.tickets_for(call_id),
    records_of=lambda fake: fake.all_tickets(),
    record_id=lambda record: str(record["id"]),
    # the requester, unless it is the stand-in that raises the tickets of unknown callers
    person=lambda record: (
        None if record["requester"]["email"] == UNLINKED_REQUESTER else str(record["requester_id"])
    ),
    seconds=_freshdesk_seconds,
    outcome=lambda record: FRESHDESK_STATUS[record["status"]],
    notes=_freshdesk_notes,
    contacts_with=lambda fake, number: [
        str(cid)
        for cid, contact in fake.contacts.items()
        if number in (contact["phone"], contact["mobile"])
    ],
    outcomes={"completed": "Resolved", "missed": "Open"},
    create_path="/api/v2/tickets",
    updates=False,  # created when the call has ended (then updated by the final record)
    add_owner=lambda fake, email: fake.add_agent(email, "Giulia Rossi"),
    token_key="api_key",
    daily_quota=False,
)

CRMS = {
    vendor.name: vendor
    for vendor in (HUBSPOT, PIPEDRIVE, SALESFORCE, ZOHO, DYNAMICS, ZENDESK, FRESHDESK)
}
VENDORS = list(CRMS.values())
OAUTH_VENDORS = [vendor for vendor in VENDORS if vendor.oauth]
# every way to get an access token: each Salesforce flow, and Zoho's refresh token
TOKEN_VENDORS = [*(SALESFORCE.with_flow(flow) for flow in FLOWS), ZOHO, DYNAMICS]
REFRESHING = [SALESFORCE.with_flow("refresh_token"), ZOHO]  # those holding a refresh token


def vendor_id(vendor: Vendor) -> str:
    return vendor.label


@contextlib.asynccontextmanager
async def running(fake: Any) -> AsyncIterator[str]:
    async with serve(fake.app) as url:
        try:
            yield url
        finally:
            fake.faults.release.set()  # a scripted hang must not hold the shutdown


async def post_all(relay: RunningRelay, events: Events, integration: str) -> None:
    for _, body in events:
        response = await relay.post(body, integration=integration)
        assert response.status_code == 200, response.text


async def post_live(relay: RunningRelay, events: Events, integration: str) -> None:
    """Each event once the one before has settled: a call as it happens, its events seconds or
    minutes apart, so a coalescing connector has nothing pending to leave out."""
    for item in events:
        await post_all(relay, [item], integration)
        await relay.settled()


def duplicate(body: bytes) -> bytes:
    """The same event re-sent by Wildix with a new envelope time: new bytes, same content."""
    data = msgspec.json.decode(body)
    data["time"] += 1
    return msgspec.json.encode(data)


def day(n: int) -> Events:
    """n calls: alternately outbound answered and inbound missed, current generation."""
    events: Events = []
    for i in range(n):
        if i % 2:
            events += current_inbound_missed(f"day_{i}", FR_CALLER, offset=i * 1000)
        else:
            events += current_outbound(f"day_{i}", UK_CONTACT, offset=i * 1000)
    return events


async def link_ids(relay: RunningRelay, connector: str = "crm") -> dict[str, str]:
    """Wildix call id → the CRM record id relay keeps in its links (a connector may keep other
    links of its own: Freshdesk's ``ticket:<id>``)."""
    rows = await relay.rows(links, links.c.connector == connector, links.c.key.startswith("call:"))
    return {row.key.split(":", 2)[2]: row.value["acts"]["call"].get("id") for row in rows}


async def retry_dead(relay: RunningRelay) -> int:
    """What an operator's Retry does (relay.admin.actions.retry) to every dead delivery."""
    dead = [d.id for d in await relay.deliveries() if d.state == "dead"]
    for delivery_id in dead:
        await actions.retry(relay.store, delivery_id)
    return len(dead)


async def settled_opening(relay: RunningRelay, window: Any, timeout: float = 60) -> list[Any]:
    """Wait until every delivery has settled, letting the fake's rate window's interval pass
    (``Window.elapse``) each time it has refused a request: the refusal is certain (the interval
    is long) and the way on after it comes from what the fake saw, not from the clock."""
    seen = 0

    async def done() -> list[Any] | None:
        nonlocal seen
        if window.rejected > seen:
            seen = window.rejected
            window.elapse()
        rows = await relay.deliveries()
        return rows if rows and all(r.state in SETTLED for r in rows) else None

    return await relay.wait_until(done, timeout, "deliveries to settle")


async def paused_attempts(relay: RunningRelay) -> list[Any]:
    """Every attempt recorded as a pause (the CRM's limit, not the delivery's failure)."""
    return [
        a
        for row in await relay.deliveries()
        for a in await relay.attempts(row.id)
        if a.outcome == "paused"
    ]
