"""The CRM scenarios of part 1, through Salesforce and Zoho CRM: signed Wildix events posted to a
running relay, delivered to loopback fakes that speak each vendor's OAuth and REST API. What is
asserted is what the fake CRM holds (one Task / Call per call, its fields and its contact or
lead) and the link relay keeps to it."""

from __future__ import annotations

import pytest

from tests.conftest import make_settings, run_relay
from tests.crm_calls import current_inbound_missed, current_outbound, legacy
from tests.crm_oauth_support import SCENARIO_VENDORS, OAuthVendor, link_ids
from tests.crm_support import FR_CALLER, UK_CONTACT, duplicate, post_all, running

REC = "https://pbx.example.org/recordings/2025.11.29-10.30.14-214.wav"
ids = pytest.mark.parametrize("vendor", SCENARIO_VENDORS, ids=lambda v: v.name)


@ids
async def test_outbound_completed_current_generation(db_url: str, vendor: OAuthVendor) -> None:
    fake = vendor.fake()
    seeded = vendor.seed(fake)
    events = current_outbound("it_out_1", UK_CONTACT, recording_url=REC)
    async with running(fake) as url:
        settings = make_settings(db_url, {"crm": vendor.block(fake, url)})
        async with run_relay(settings) as relay:
            await post_all(relay, events[:1], "q7m2xk")
            await relay.settled()
            if vendor.name == "salesforce":  # created at the first routed event
                [task] = vendor.records(fake, "it_out_1")
                assert (task["Status"], task["TaskSubtype"]) == ("In Progress", "Call")
                assert "CallDurationInSeconds" not in task
            else:  # Call_Type cannot change later: nothing before the call has ended
                assert vendor.records(fake, "it_out_1") == []
            await post_all(relay, events[1:], "q7m2xk")
            rows = await relay.settled()
            assert all(r.state == "succeeded" for r in rows)
            links = await link_ids(relay)
    [record] = vendor.records(fake, "it_out_1")
    assert len(vendor.all_records(fake)) == 1
    assert links == {"it_out_1": vendor.record_id(record)}
    assert vendor.person(record) == seeded["uk"]
    assert vendor.seconds(record) == 181  # the final record's 180.602 s
    assert REC in record["Description"]
    assert record["Subject"] == f"Outbound call to Olivia Hart ({UK_CONTACT})"
    assert fake.tokens.issued == 1  # one token for the whole call, cached in between
    creates = [e for e in fake.log if e[0] == "POST" and e[1].endswith(("/Task", "/Calls"))]
    assert len(creates) == 1
    if vendor.name == "salesforce":
        assert record["CallType"] == "Outbound" and record["Status"] == "Completed"
        assert record["CallDisposition"] == "Answered"
        assert record["CallObject"] == "it_out_1"
        assert record["ActivityDate"] == "2025-11-29"
        assert record["OwnerId"] == seeded["owner"]
        assert record["updates"] >= 1
    else:
        assert record["Call_Type"] == "Outbound"
        assert record["Outgoing_Call_Status"] == "Completed"
        assert record["Call_Start_Time"] == "2025-11-29T10:30:10+00:00"
        assert record["Call_Duration"] == "03:01"
        assert record["Owner"] == {"id": seeded["owner"]}
        assert "What_Id" not in record


@ids
async def test_inbound_missed_and_legacy_generation(db_url: str, vendor: OAuthVendor) -> None:
    fake = vendor.fake()
    seeded = vendor.seed(fake)
    calls = {
        "cur_missed": current_inbound_missed("cur_missed", FR_CALLER),
        "leg_out": legacy("leg_out", UK_CONTACT, direction="outbound", answered=True),
        "leg_missed": legacy("leg_missed", FR_CALLER, direction="inbound", answered=False),
    }
    async with running(fake) as url:
        settings = make_settings(db_url, {"crm": vendor.block(fake, url, timezone="Europe/Rome")})
        async with run_relay(settings) as relay:
            for call_id, events in calls.items():
                await post_all(relay, events, "h3p9ta" if call_id.startswith("leg") else "q7m2xk")
            rows = await relay.settled()
            assert all(r.state == "succeeded" for r in rows)
    assert len(vendor.all_records(fake)) == 3
    [missed] = vendor.records(fake, "cur_missed")
    [out] = vendor.records(fake, "leg_out")
    [leg_missed] = vendor.records(fake, "leg_missed")
    assert vendor.person(missed) == vendor.person(leg_missed) == seeded["fr"]  # the lead
    assert vendor.person(out) == seeded["uk"]
    assert vendor.seconds(out) == 125  # legacy has no durations: end time minus start time
    assert vendor.seconds(missed) == 28
    if vendor.name == "salesforce":
        for task in (missed, leg_missed):
            assert (task["CallType"], task["CallDisposition"]) == ("Inbound", "No answer")
        assert (out["CallType"], out["CallDisposition"]) == ("Outbound", "Answered")
    else:
        for call in (missed, leg_missed):
            assert call["Call_Type"] == "Missed"
            assert call["$se_module"] == "Leads" and "Who_Id" not in call  # a lead: What_Id
        assert out["Call_Type"] == "Outbound" and out["Who_Id"] == {"id": seeded["uk"]}
        assert missed["Call_Start_Time"].endswith("+01:00")  # the account's time zone (CET)


@ids
async def test_internal_call_writes_nothing(db_url: str, vendor: OAuthVendor) -> None:
    fake = vendor.fake()
    vendor.seed(fake)
    async with running(fake) as url:
        settings = make_settings(db_url, {"crm": vendor.block(fake, url)})
        async with run_relay(settings) as relay:
            await post_all(relay, legacy("internal_1", None), "h3p9ta")
            rows = await relay.settled()
            assert len(rows) == 3 and all(r.state == "succeeded" for r in rows)
    assert vendor.all_records(fake) == []
    assert fake.log == []  # not a lookup, not even a token


@ids
async def test_reordered_and_duplicated_events_make_one_record(
    db_url: str, vendor: OAuthVendor
) -> None:
    fake = vendor.fake()
    vendor.seed(fake)
    start, update, end, record = current_outbound("dup_1", UK_CONTACT, recording_url=REC)
    async with running(fake) as url:
        settings = make_settings(db_url, {"crm": vendor.block(fake, url)})
        async with run_relay(settings) as relay:
            # the final record overtakes the live end; every event arrives twice
            for _, body in (start, update, record):
                for copy in (body, duplicate(body)):
                    assert (await relay.post(copy)).status_code == 200
            await relay.settled()
            [before] = vendor.records(fake, "dup_1")
            snapshot, requests = repr(before), len(fake.log)
            for copy in (end[1], duplicate(end[1])):  # the late live end changes nothing
                assert (await relay.post(copy)).status_code == 200
            rows = await relay.settled()
            assert len(rows) == 8 and all(r.state == "succeeded" for r in rows)
    [after] = vendor.records(fake, "dup_1")
    assert repr(after) == snapshot and len(fake.log) == requests  # not even a request
    assert len(vendor.all_records(fake)) == 1
    assert vendor.seconds(after) == 181


@ids
async def test_unknown_number_logged_unlinked_or_with_a_new_contact(
    db_url: str, vendor: OAuthVendor
) -> None:
    unknown = "+12025550143"
    unlinked, creating = vendor.fake(), vendor.fake()
    for fake in (unlinked, creating):
        vendor.seed(fake)
    async with running(unlinked) as u1, running(creating) as u2:
        connectors = {
            "unlinked": vendor.block(unlinked, u1),
            "create": vendor.block(creating, u2, on_no_match="create_contact"),
        }
        async with run_relay(make_settings(db_url, connectors)) as relay:
            await post_all(relay, current_outbound("nomatch_1", unknown), "q7m2xk")
            rows = await relay.settled()
            assert len(rows) == 8 and all(r.state == "succeeded" for r in rows)
    [alone] = vendor.records(unlinked, "nomatch_1")
    assert vendor.person(alone) is None
    [linked] = vendor.records(creating, "nomatch_1")
    [new] = [cid for cid, c in creating.contacts.items() if c["Phone"] == unknown]
    assert vendor.person(linked) == new
    assert len(creating.contacts) == 2  # the seeded one and the new one: created once
