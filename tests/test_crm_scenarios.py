"""The CRM scenarios of the issue, through the real pipeline, against each of the four CRMs
(HubSpot, Pipedrive, Salesforce, Zoho CRM): signed Wildix events posted to a running relay, the
dispatcher delivering to loopback fakes that speak each vendor's API (and OAuth). What is asserted
is what the fake CRM holds: one record per call, with the right fields, on the right contact or
lead, and the link relay keeps to it."""

from __future__ import annotations

import copy
from typing import Any

import msgspec
import pytest
import yaml

from relay import AuthError
from relay.config import ConfigError, parse_config
from relay.registry import connector_types
from tests.support.calls import current_inbound_missed, current_outbound, legacy
from tests.support.crm import (
    CRMS,
    FR_CALLER,
    UK_CONTACT,
    VENDORS,
    Vendor,
    duplicate,
    link_ids,
    post_all,
    post_live,
    running,
    vendor_id,
)
from tests.support.relay import DONE, make_settings, run_relay

REC = "https://pbx.example.org/recordings/2025.11.29-10.30.14-214.wav"
TITLE = f"Outbound call to Olivia Hart ({UK_CONTACT})"
ids = pytest.mark.parametrize("vendor", VENDORS, ids=vendor_id)


@ids
async def test_outbound_completed_current_generation(db_url: str, vendor: Vendor) -> None:
    fake = vendor.fake()
    seeded = vendor.seed(fake)
    events = current_outbound("it_out_1", UK_CONTACT, recording_url=REC)
    # the live path: created at the first routed event where the CRM can take it
    live = {"create_at": "start"} if vendor.updates else {}
    async with running(fake) as url:
        settings = make_settings(db_url, {"crm": vendor.block(fake, url, **live)})
        async with run_relay(settings) as relay:
            await post_all(relay, events[:1], "q7m2xk")
            await relay.settled()
            early = vendor.records(fake, "it_out_1")
            if vendor.updates:  # in progress
                [call] = early
                if vendor.name == "hubspot":
                    assert call["properties"]["hs_call_status"] == "IN_PROGRESS"
                elif vendor.name == "dynamics":
                    assert (call["category"], call["directioncode"]) == ("In progress", True)
                    assert "actualend" not in call and "actualdurationminutes" not in call
                else:
                    assert (call["Status"], call["TaskSubtype"]) == ("In Progress", "Call")
                    assert "CallDurationInSeconds" not in call
            else:  # a Pipedrive call log cannot be updated, nor a Zoho Call_Type: nothing yet
                assert early == []
            await post_live(relay, events[1:], "q7m2xk")  # the live end, then the record
            rows = await relay.settled()
            assert all(r.state == "succeeded" for r in rows)
            links = await link_ids(relay)
    [record] = vendor.records(fake, "it_out_1")
    assert len(vendor.all_records(fake)) == 1
    assert links == {"it_out_1": vendor.record_id(record)}
    assert vendor.outcome(record) == vendor.outcomes["completed"]
    assert vendor.person(record) == seeded["uk"]
    assert vendor.seconds(record) == vendor.kept_seconds(180_602)  # the final record's 180.602 s
    assert REC in vendor.notes(record)
    creates = [e for e in fake.log if e[0] == "POST" and e[1].endswith(vendor.create_path)]
    assert len(creates) == 1
    if vendor.oauth:
        assert fake.tokens.issued == 1  # one token for the whole call, cached in between
    if vendor.name == "hubspot":
        props = record["properties"]
        assert props["hs_call_direction"] == "OUTBOUND"
        assert props["hs_call_duration"] == "180602"  # the final record's ms
        assert props["hs_call_recording_url"] == REC
        assert props["hs_call_disposition"] == "f240bbac-87c9-4f6e-bf70-924b57d47db7"
        assert props["hs_timestamp"] == "2025-11-29T10:30:10.458Z"
        assert props["hubspot_owner_id"] == seeded["owner"]
        assert (props["hs_call_from_number"], props["hs_call_to_number"]) == ("214", UK_CONTACT)
        assert props["hs_call_title"] == TITLE
        assert record["updates"] >= 1
    elif vendor.name == "pipedrive":
        assert record["duration"] == "181"
        assert (record["start_time"], record["end_time"]) == (
            "2025-11-29 10:30:10",
            "2025-11-29 10:33:11",
        )
        assert (record["from_phone_number"], record["to_phone_number"]) == ("214", UK_CONTACT)
        assert str(record["user_id"]) == seeded["owner"]
        assert REC in record["note"]
        assert record["subject"] == TITLE
    elif vendor.name == "salesforce":
        assert REC in record["Description"]
        assert record["Subject"] == TITLE
        assert record["CallType"] == "Outbound" and record["Status"] == "Completed"
        assert record["CallDisposition"] == "Answered"
        assert record["CallObject"] == "it_out_1"
        assert record["ActivityDate"] == "2025-11-29"
        assert record["OwnerId"] == seeded["owner"]
        assert record["updates"] >= 1
    elif vendor.name == "dynamics":
        assert REC in record["description"]
        assert record["subject"] == TITLE
        assert (record["directioncode"], record["category"]) == (True, "Answered")
        assert record["phonenumber"] == UK_CONTACT
        assert (record["actualstart"], record["actualend"]) == (
            "2025-11-29T10:30:10Z",
            "2025-11-29T10:33:11Z",
        )
        assert record["actualdurationminutes"] == 4  # 181 s, rounded up to whole minutes
        assert record["ownerid@odata.bind"] == f"/systemusers({seeded['owner']})"
        assert record["regardingobjectid_contact@odata.bind"] == f"/contacts({seeded['uk']})"
        assert record["phonecall_activity_parties"] == [  # outgoing: our user is the sender
            {
                "partyid_systemuser@odata.bind": f"/systemusers({seeded['owner']})",
                "participationtypemask": 1,
            },
            {
                "partyid_contact@odata.bind": f"/contacts({seeded['uk']})",
                "participationtypemask": 2,
            },
        ]
        assert record["updates"] >= 1
    elif vendor.name == "zendesk":
        assert record["subject"] == TITLE
        assert str(record["assignee_id"]) == seeded["owner"]
        assert record["external_id"].startswith("wx") and record["group_id"] is None
        assert {"wildix", "call_answered", "call_outbound"} <= set(record["tags"])
        [note, voice, final] = record["comments"]  # the final record added one private note
        assert (note["type"], note["public"], final["public"]) == ("Comment", False, False)
        assert voice["data"] == {
            "from": "214",
            "to": UK_CONTACT,
            "started_at": "2025-11-29T10:30:10Z",
            "call_duration": 181,
            "recording_url": REC,
            "answered_by_id": int(seeded["owner"]),
        }
        assert record["updates"] == 1
    elif vendor.name == "freshdesk":
        assert record["subject"] == TITLE and TITLE in record["description"]
        assert (record["source"], record["priority"]) == (3, 1)  # Phone, Low
        assert str(record["requester_id"]) == seeded["uk"]
        assert str(record["responder_id"]) == seeded["owner"]
        [note] = record["conversations"]
        assert note["private"] and REC in note["body"] and REC not in record["description"]
        assert "When: 2025-11-29 10:30:10 UTC, 3:01" in note["body"]
        assert record["tags"] == [note["body"].rsplit("ref ", 1)[1]]  # the marker
        # the final record changed the note (180.602 s), not the ticket: only the note is put
        assert (record["updates"], note["updates"]) == (0, 1)
    else:
        assert REC in record["Description"]
        assert record["Subject"] == TITLE
        assert record["Call_Type"] == "Outbound"
        assert record["Outgoing_Call_Status"] == "Completed"
        assert record["Call_Start_Time"] == "2025-11-29T10:30:10+00:00"
        assert record["Call_Duration"] == "03:01"
        assert record["Owner"] == {"id": seeded["owner"]}
        assert "What_Id" not in record


@ids
async def test_inbound_missed_and_legacy_generation(db_url: str, vendor: Vendor) -> None:
    fake = vendor.fake()
    seeded = vendor.seed(fake)
    calls: dict[str, Any] = {
        "cur_missed": current_inbound_missed("cur_missed", FR_CALLER),
        "leg_out": legacy("leg_out", UK_CONTACT, direction="outbound", answered=True),
        "leg_missed": legacy("leg_missed", FR_CALLER, direction="inbound", answered=False),
    }
    # the OAuth CRMs run in an account time zone other than UTC (Zoho writes it into the times)
    zone = {"timezone": "Europe/Rome"} if vendor.oauth else {}
    async with running(fake) as url:
        settings = make_settings(db_url, {"crm": vendor.block(fake, url, **zone)})
        async with run_relay(settings) as relay:
            for call_id, events in calls.items():
                await post_all(relay, events, "h3p9ta" if call_id.startswith("leg") else "q7m2xk")
            rows = await relay.settled()
            assert all(r.state in DONE for r in rows)
    assert len(vendor.all_records(fake)) == 3
    expect = vendor.outcomes
    [missed] = vendor.records(fake, "cur_missed")
    assert vendor.outcome(missed) == expect["missed"]
    assert vendor.person(missed) == seeded["fr"]  # a lead, where the CRM has leads
    [out] = vendor.records(fake, "leg_out")
    assert vendor.outcome(out) == expect["completed"]
    assert vendor.person(out) == seeded["uk"]
    assert vendor.seconds(out) == 125  # legacy has no durations: end time minus start time
    [leg_missed] = vendor.records(fake, "leg_missed")
    assert vendor.outcome(leg_missed) == expect["missed"]
    assert vendor.person(leg_missed) == seeded["fr"]
    assert vendor.seconds(missed) == vendor.kept_seconds(28_313)
    if vendor.name == "hubspot":
        assert missed["properties"]["hs_call_direction"] == "INBOUND"
        assert missed["properties"]["hs_call_disposition"] == (
            "73a0d17f-1163-4015-bdd5-ec830791da20"
        )
        assert missed["properties"]["hs_call_from_number"] == FR_CALLER
        assert out["properties"]["hs_call_direction"] == "OUTBOUND"
    elif vendor.name == "pipedrive":
        assert (missed["from_phone_number"], missed["to_phone_number"]) == (
            FR_CALLER,
            "+442030950000",
        )
        assert missed["duration"] == "28"
    elif vendor.name == "salesforce":
        for task in (missed, leg_missed):
            assert (task["CallType"], task["CallDisposition"]) == ("Inbound", "No answer")
        assert (out["CallType"], out["CallDisposition"]) == ("Outbound", "Answered")
    elif vendor.name == "dynamics":
        for call in (missed, leg_missed):
            assert (call["directioncode"], call["category"]) == (False, "Missed")
            assert call["phonenumber"] == FR_CALLER
            assert call["regardingobjectid_lead@odata.bind"] == f"/leads({seeded['fr']})"
            assert "regardingobjectid_contact@odata.bind" not in call
        assert missed["actualstart"].endswith("Z")  # UTC whatever the account's time zone
        assert missed["actualdurationminutes"] == 1  # 28 s
        assert missed["phonecall_activity_parties"][-1] == {  # incoming: the caller sends
            "partyid_lead@odata.bind": f"/leads({seeded['fr']})",
            "participationtypemask": 1,
        }
        assert (out["directioncode"], out["category"]) == (True, "Answered")
    elif vendor.name == "zendesk":
        voice = next(c for c in missed["comments"] if c["type"] == "VoiceComment")
        assert voice["data"]["from"] == FR_CALLER and "answered_by_id" not in voice["data"]
        assert "recording_url" not in voice["data"]
        assert missed["subject"] == f"Missed call from Luc Moreau ({FR_CALLER})"
        assert "call_inbound" in missed["tags"] and "call_outbound" in out["tags"]
    elif vendor.name == "freshdesk":
        assert missed["subject"] == f"Missed call from Luc Moreau ({FR_CALLER})"
        assert missed["requester"]["mobile"] == "+33 1 42 68 53 00"  # found by its mobile
        assert str(missed["responder_id"]) == seeded["owner"]  # the agent it rang
        assert [n["private"] for n in missed["conversations"]] == [True]
    else:
        for call in (missed, leg_missed):
            assert call["Call_Type"] == "Missed"
            assert call["$se_module"] == "Leads" and "Who_Id" not in call  # a lead: What_Id
        assert out["Call_Type"] == "Outbound" and out["Who_Id"] == {"id": seeded["uk"]}
        assert missed["Call_Start_Time"].endswith("+01:00")  # the account's time zone (CET)


@ids
async def test_internal_call_writes_nothing(db_url: str, vendor: Vendor) -> None:
    fake = vendor.fake()
    vendor.seed(fake)
    async with running(fake) as url:
        settings = make_settings(db_url, {"crm": vendor.block(fake, url)})
        async with run_relay(settings) as relay:
            await post_all(relay, legacy("internal_1", None), "h3p9ta")
            rows = await relay.settled()
            assert len(rows) == 3 and all(r.state in DONE for r in rows)
    assert vendor.all_records(fake) == []
    assert fake.log == []  # not a lookup, not even a token


@ids
async def test_reordered_and_duplicated_events_make_one_record(db_url: str, vendor: Vendor) -> None:
    fake = vendor.fake()
    vendor.seed(fake)
    start, update, end, record = current_outbound("dup_1", UK_CONTACT, recording_url=REC)
    async with running(fake) as url:
        settings = make_settings(db_url, {"crm": vendor.block(fake, url)})
        async with run_relay(settings) as relay:
            # the final record overtakes the live end; every event arrives twice
            for _, body in (start, update, record):
                for again in (body, duplicate(body)):
                    assert (await relay.post(again)).status_code == 200
            await relay.settled()
            [before] = vendor.records(fake, "dup_1")
            snapshot, requests = repr(before), len(fake.log)
            for again in (end[1], duplicate(end[1])):  # the late live end changes nothing
                assert (await relay.post(again)).status_code == 200
            rows = await relay.settled()
            assert len(rows) == 8 and all(r.state in DONE for r in rows)
    [after] = vendor.records(fake, "dup_1")
    assert repr(after) == snapshot
    assert len(fake.log) == requests  # not even a request
    assert len(vendor.all_records(fake)) == 1
    assert vendor.outcome(after) == vendor.outcomes["completed"]
    assert vendor.seconds(after) == vendor.kept_seconds(180_602)


@ids
async def test_unknown_number_follows_each_on_no_match_mode(db_url: str, vendor: Vendor) -> None:
    """One relay, three accounts of the same CRM, one per mode."""
    unknown = "+12025550143"
    modes = ("log_unlinked", "create_contact", "skip")
    fakes = {mode: vendor.fake() for mode in modes}
    for fake in fakes.values():
        vendor.seed(fake)
    async with (
        running(fakes["log_unlinked"]) as u1,
        running(fakes["create_contact"]) as u2,
        running(fakes["skip"]) as u3,
    ):
        connectors = {
            "unlinked": vendor.block(fakes["log_unlinked"], u1, on_no_match="log_unlinked"),
            "create": vendor.block(fakes["create_contact"], u2, on_no_match="create_contact"),
            "skip": vendor.block(fakes["skip"], u3, on_no_match="skip"),
        }
        async with run_relay(make_settings(db_url, connectors)) as relay:
            await post_all(relay, current_outbound("nomatch_1", unknown), "q7m2xk")
            rows = await relay.settled()
            assert len(rows) == 12 and all(r.state in DONE for r in rows)
    [alone] = vendor.records(fakes["log_unlinked"], "nomatch_1")
    assert vendor.person(alone) is None
    assert vendor.contacts_with(fakes["log_unlinked"], unknown) == []
    creating = fakes["create_contact"]
    [linked] = vendor.records(creating, "nomatch_1")
    [new] = vendor.contacts_with(creating, unknown)  # created once
    assert vendor.person(linked) == new
    assert vendor.all_records(fakes["skip"]) == []
    if vendor.name == "hubspot":
        assert alone["properties"]["hs_call_to_number"] == unknown
    elif vendor.name == "pipedrive":
        assert creating.persons[int(new)]["name"] == unknown
    elif vendor.name == "zendesk":
        assert creating.users[int(new)]["role"] == "end-user"
        assert len(creating.contacts) == 3  # the two seeded end users and the new one
    elif vendor.name == "freshdesk":
        assert creating.contacts[int(new)]["name"] == unknown
        assert alone["requester"]["email"] == "unknown.caller@example.org"  # the stand-in
        assert f"Outbound call to {unknown}" == alone["subject"]
    else:
        assert len(creating.contacts) == 2  # the seeded one and the new one


@ids
async def test_per_leg_logs_each_leg_of_a_transferred_call(db_url: str, vendor: Vendor) -> None:
    whole, legs = vendor.fake(), vendor.fake()
    for fake in (whole, legs):
        vendor.seed(fake)
    *_, (_, record) = current_outbound("xfer_1", UK_CONTACT)
    body = msgspec.json.decode(record)
    second = copy.deepcopy(body["data"]["flows"][0])
    second.update(
        flowIndex=1,
        startTime=second["endTime"],
        endTime=second["endTime"] + 60_000,
        duration=60_000,
        talkTime=58_000,
    )
    second["caller"] = dict(second["caller"], phone="215", userExtension="215", name="Marco")
    body["data"]["flows"].append(second)
    async with running(whole) as u1, running(legs) as u2:
        connectors = {
            "whole": vendor.block(whole, u1),
            "legs": vendor.block(legs, u2, per_leg=True),
        }
        async with run_relay(make_settings(db_url, connectors)) as relay:
            assert (await relay.post(msgspec.json.encode(body))).status_code == 200
            rows = await relay.settled()
            assert all(r.state in DONE for r in rows)
    [one] = vendor.records(whole, "xfer_1")
    assert len(vendor.all_records(whole)) == 1
    assert vendor.seconds(one) == vendor.kept_seconds(180_602 + 60_000)  # legs summed
    by_leg = sorted(vendor.all_records(legs), key=vendor.seconds, reverse=True)
    assert [vendor.seconds(c) for c in by_leg] == [
        vendor.kept_seconds(180_602),
        vendor.kept_seconds(60_000),
    ]
    assert "Giulia Rossi (ext. 214)" in vendor.notes(by_leg[0])  # each leg its own agent
    assert "Marco (ext. 215)" in vendor.notes(by_leg[1])
    if vendor.name == "hubspot":
        assert one["properties"]["hs_call_duration"] == str(180_602 + 60_000)
        assert [c["properties"]["hs_call_from_number"] for c in by_leg] == ["214", "215"]
        assert [c["properties"]["hs_call_duration"] for c in by_leg] == ["180602", "60000"]


@pytest.mark.parametrize("vendor", [v for v in VENDORS if not v.updates], ids=vendor_id)
async def test_create_once_crm_without_final_records_logs_at_the_live_end(
    db_url: str, vendor: Vendor
) -> None:
    """Pipedrive and Zoho write a call once; with ``wait_for_record: false`` at the live end."""
    fake = vendor.fake()
    seeded = vendor.seed(fake)
    *live, record = current_outbound("live_1", UK_CONTACT)
    async with running(fake) as url:
        block = vendor.block(fake, url, wait_for_record=False)
        async with run_relay(make_settings(db_url, {"crm": block})) as relay:
            await post_all(relay, live, "q7m2xk")
            await relay.settled()
            [log] = vendor.records(fake, "live_1")
            # the live update saw the call answered
            assert vendor.outcome(log) == vendor.outcomes["completed"]
            # the live end came 180.6 s after the live start's data.start
            assert vendor.seconds(log) == 181
            assert vendor.person(log) == seeded["uk"]
            if vendor.name == "pipedrive":
                assert log["outcome"] == "connected" and log["duration"] == "181"
            await post_all(relay, [record], "q7m2xk")  # a record after all: nothing twice
            await relay.settled()
    assert len(vendor.all_records(fake)) == 1


@ids
async def test_by_default_the_record_appears_when_the_call_ends(
    db_url: str, vendor: Vendor
) -> None:
    """``create_at: end`` (Pipedrive: ``record``): nothing while the call goes on; the live end
    creates the record with its outcome; the final record brings the exact duration."""
    fake = vendor.fake()
    vendor.seed(fake)
    start, update, end, record = current_outbound("end_1", UK_CONTACT, recording_url=REC)
    async with running(fake) as url:
        settings = make_settings(db_url, {"crm": vendor.block(fake, url)})
        async with run_relay(settings) as relay:
            await post_all(relay, [start, update], "q7m2xk")
            await relay.settled()
            assert vendor.records(fake, "end_1") == []
            await post_all(relay, [end], "q7m2xk")
            await relay.settled()
            at_end = vendor.records(fake, "end_1")
            if vendor.name == "pipedrive":  # a call log cannot be updated: the final data only
                assert at_end == []
            else:
                [log] = at_end
                assert vendor.outcome(log) == vendor.outcomes["completed"]
                assert round(vendor.seconds(log)) == 181  # the live start to the live end
            await post_all(relay, [record], "q7m2xk")
            await relay.settled()
    [log] = vendor.records(fake, "end_1")
    assert vendor.seconds(log) == vendor.kept_seconds(180_602)  # the final record's 180.602 s
    assert len([e for e in fake.log if e[0] == "POST" and e[1].endswith(vendor.create_path)]) == 1


@ids
async def test_create_at_record_writes_each_call_once_from_its_final_record(
    db_url: str, vendor: Vendor
) -> None:
    """``create_at: record``: the live events write nothing; the final record creates the
    record, complete, and nothing updates it afterwards."""
    fake = vendor.fake()
    seeded = vendor.seed(fake)
    *live, record = current_outbound("rec_1", UK_CONTACT, recording_url=REC)
    async with running(fake) as url:
        block = vendor.block(fake, url, create_at="record")
        async with run_relay(make_settings(db_url, {"crm": block})) as relay:
            await post_all(relay, live, "q7m2xk")
            await relay.settled()
            assert vendor.records(fake, "rec_1") == []
            await post_all(relay, [record], "q7m2xk")
            await relay.settled()
    [log] = vendor.records(fake, "rec_1")
    assert vendor.outcome(log) == vendor.outcomes["completed"]
    assert vendor.seconds(log) == vendor.kept_seconds(180_602)
    assert vendor.person(log) == seeded["uk"]
    assert REC in vendor.notes(log)
    writes = [e[:2] for e in fake.log if e[0] in ("POST", "PUT", "PATCH")]
    updates = [w for w in writes if w[0] != "POST"]
    # no update, but Dynamics' completing one: statecode is not valid for create
    assert len(updates) == (1 if vendor.name == "dynamics" else 0)
    assert len([w for w in writes if w[1].endswith(vendor.create_path)]) == 1


@pytest.mark.parametrize(
    ("vendor", "at", "says"),
    [
        (CRMS["zoho"], "start", "use end or record"),
        (CRMS["pipedrive"], "start", "use end or record"),
        (CRMS["freshdesk"], "start", "use end or record"),
        (CRMS["hubspot"], "later", "create_at"),
    ],
    ids=lambda v: getattr(v, "name", v),
)
def test_create_at_earlier_than_the_crm_allows_names_the_key(
    vendor: Vendor, at: str, says: str
) -> None:
    block = vendor.block(vendor.fake(), "http://127.0.0.1:9", create_at=at)
    text = yaml.safe_dump({"connectors": {"crm": block}})
    with pytest.raises(ConfigError, match=r"\$\.connectors\.crm") as info:
        parse_config(text, connector_types=connector_types(), env={})
    assert says in str(info.value)


@pytest.mark.parametrize("vendor", [v for v in VENDORS if not v.oauth], ids=vendor_id)
async def test_check_verifies_the_token(vendor: Vendor, tmp_path: Any) -> None:
    """The static API tokens; the OAuth CRMs' check is in tests/test_crm_oauth_parts.py."""
    import httpx

    from relay.config import parse_config
    from relay.connector import ConnectorContext, Limiters
    from relay.registry import connector_types
    from relay.store import db
    from relay.store.records import Store

    fake = vendor.fake()
    engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path}/c.db")
    await db.migrate(engine)
    try:
        async with running(fake) as url, httpx.AsyncClient() as http:
            for token, ok in ((None, True), ("wrong-token", False)):
                block = vendor.block(fake, url)
                if token:
                    assert vendor.token_key
                    block[vendor.token_key] = token
                settings = parse_config(
                    yaml.safe_dump({"connectors": {"crm": block}}),
                    connector_types=connector_types(),
                    env={},
                )
                inst = settings.connectors["crm"]
                conn = inst.cls("crm", inst.options)
                ctx = ConnectorContext(
                    name="crm", http=http, store=Store(engine), limiters=Limiters()
                )
                if ok:
                    await conn.check(ctx)
                else:
                    with pytest.raises(AuthError, match="rejected"):
                        await conn.check(ctx)
    finally:
        await engine.dispose()
    assert [status for _, _, status in fake.log] == [200, 401]


NATIONAL = {  # stored the way a local colleague types it, no country code; E.164 of the caller
    "fr": ("06 12 34 56 78", "+33612345678"),
    "it": ("312 345 6789", "+393123456789"),
    "de": ("030 901820", "+4930901820"),
    "gb": ("020 7183 8750", "+442071838750"),
    "us": ("(212) 736-5000", "+12127365000"),
}


def add_contact(vendor: Vendor, fake: Any, phone: str, name: str) -> str:
    if vendor.name == "pipedrive":
        return str(fake.add_person(name, phone))
    first, last = name.split()
    return fake.add_contact(phone, first, last)


@ids
async def test_national_numbers_match_in_the_callers_country_without_default_region(
    db_url: str, vendor: Vendor
) -> None:
    fake = vendor.fake()
    # first, so that a comparison of digits alone would pick it for the French caller
    italian = add_contact(vendor, fake, "+39 612 345 678", "Marco Italiano")
    seeded = {
        cc: add_contact(vendor, fake, phone, f"Client {cc}") for cc, (phone, _) in NATIONAL.items()
    }
    async with running(fake) as url:
        block = vendor.block(fake, url, default_region=None, on_no_match="log_unlinked")
        async with run_relay(make_settings(db_url, {"crm": block})) as relay:
            for cc, (_, caller) in NATIONAL.items():
                await post_all(relay, current_inbound_missed(f"nat_{cc}", caller), "q7m2xk")
            rows = await relay.settled()
    assert all(r.state in DONE for r in rows)
    linked = {cc: vendor.person(vendor.records(fake, f"nat_{cc}")[0]) for cc in NATIONAL}
    assert linked == seeded
    assert italian not in linked.values()
