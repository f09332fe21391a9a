"""The CRM scenarios of the issue, through the real pipeline: signed Wildix events posted to a
running relay, the dispatcher delivering to HubSpot and Pipedrive fakes on loopback. What is
asserted is what the fake CRM holds: one record per call, with the right fields."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import make_settings, run_relay
from tests.crm_calls import current_inbound_missed, current_outbound, legacy
from tests.crm_support import (
    EXPECTED,
    FR_CALLER,
    UK_CONTACT,
    VENDORS,
    Vendor,
    duplicate,
    post_all,
    running,
)

REC = "https://pbx.example.org/recordings/2025.11.29-10.30.14-214.wav"
ids = pytest.mark.parametrize("vendor", VENDORS, ids=lambda v: v.name)


@ids
async def test_outbound_completed_current_generation(db_url: str, vendor: Vendor) -> None:
    fake = vendor.fake()
    seeded = vendor.seed(fake)
    events = current_outbound("it_out_1", UK_CONTACT, recording_url=REC)
    async with running(fake) as url:
        settings = make_settings(db_url, {"crm": vendor.block(fake, url)})
        async with run_relay(settings) as relay:
            await post_all(relay, events[:1], "q7m2xk")
            await relay.settled()
            if vendor.name == "hubspot":  # created at the first routed event, in progress
                [call] = vendor.records(fake, "it_out_1")
                assert call["properties"]["hs_call_status"] == "IN_PROGRESS"
            else:  # a call log cannot be updated: nothing until the final data
                assert vendor.records(fake, "it_out_1") == []
            await post_all(relay, events[1:], "q7m2xk")
            rows = await relay.settled()
            assert all(r.state == "succeeded" for r in rows)
    [record] = vendor.records(fake, "it_out_1")
    assert len(vendor.all_records(fake)) == 1
    assert vendor.outcome(record) == EXPECTED[vendor.name]["completed"]
    assert vendor.person(record) == seeded["uk"]
    if vendor.name == "hubspot":
        props = record["properties"]
        assert props["hs_call_direction"] == "OUTBOUND"
        assert props["hs_call_duration"] == "180602"  # the final record's ms
        assert props["hs_call_recording_url"] == REC
        assert props["hs_call_disposition"] == "f240bbac-87c9-4f6e-bf70-924b57d47db7"
        assert props["hs_timestamp"] == "2025-11-29T10:30:10.458Z"
        assert props["hubspot_owner_id"] == seeded["owner"]
        assert (props["hs_call_from_number"], props["hs_call_to_number"]) == ("214", UK_CONTACT)
        assert props["hs_call_title"] == f"Outbound call to Olivia Hart ({UK_CONTACT})"
        assert record["updates"] >= 1
        posts = [entry for entry in fake.log if entry[:2] == ("POST", "/crm/v3/objects/calls")]
        assert len(posts) == 1
    else:
        assert record["duration"] == "181"
        assert (record["start_time"], record["end_time"]) == (
            "2025-11-29 10:30:10",
            "2025-11-29 10:33:11",
        )
        assert (record["from_phone_number"], record["to_phone_number"]) == ("214", UK_CONTACT)
        assert str(record["user_id"]) == seeded["owner"]
        assert REC in record["note"]
        assert record["subject"] == f"Outbound call to Olivia Hart ({UK_CONTACT})"


@ids
async def test_inbound_missed_and_legacy_generation(db_url: str, vendor: Vendor) -> None:
    fake = vendor.fake()
    seeded = vendor.seed(fake)
    calls: dict[str, Any] = {
        "cur_missed": current_inbound_missed("cur_missed", FR_CALLER),
        "leg_out": legacy("leg_out", UK_CONTACT, direction="outbound", answered=True),
        "leg_missed": legacy("leg_missed", FR_CALLER, direction="inbound", answered=False),
    }
    async with running(fake) as url:
        settings = make_settings(db_url, {"crm": vendor.block(fake, url)})
        async with run_relay(settings) as relay:
            for call_id, events in calls.items():
                await post_all(relay, events, "h3p9ta" if call_id.startswith("leg") else "q7m2xk")
            rows = await relay.settled()
            assert all(r.state == "succeeded" for r in rows)
    assert len(vendor.all_records(fake)) == 3
    expect = EXPECTED[vendor.name]
    [missed] = vendor.records(fake, "cur_missed")
    assert vendor.outcome(missed) == expect["missed"]
    assert vendor.person(missed) == seeded["fr"]
    [out] = vendor.records(fake, "leg_out")
    assert vendor.outcome(out) == expect["completed"]
    assert vendor.person(out) == seeded["uk"]
    assert vendor.seconds(out) == 125  # legacy has no durations: end time minus start time
    [leg_missed] = vendor.records(fake, "leg_missed")
    assert vendor.outcome(leg_missed) == expect["missed"]
    assert vendor.person(leg_missed) == seeded["fr"]
    if vendor.name == "hubspot":
        assert missed["properties"]["hs_call_direction"] == "INBOUND"
        assert missed["properties"]["hs_call_disposition"] == (
            "73a0d17f-1163-4015-bdd5-ec830791da20"
        )
        assert missed["properties"]["hs_call_from_number"] == FR_CALLER
        assert out["properties"]["hs_call_direction"] == "OUTBOUND"
    else:
        assert (missed["from_phone_number"], missed["to_phone_number"]) == (
            FR_CALLER,
            "+442030950000",
        )
        assert missed["duration"] == "28"


@ids
async def test_internal_call_writes_nothing(db_url: str, vendor: Vendor) -> None:
    fake = vendor.fake()
    vendor.seed(fake)
    async with running(fake) as url:
        settings = make_settings(db_url, {"crm": vendor.block(fake, url)})
        async with run_relay(settings) as relay:
            await post_all(relay, legacy("internal_1", None), "h3p9ta")
            rows = await relay.settled()
            assert len(rows) == 3 and all(r.state == "succeeded" for r in rows)
    assert vendor.all_records(fake) == []
    assert fake.log == []  # not even a lookup


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
                for copy in (body, duplicate(body)):
                    assert (await relay.post(copy)).status_code == 200
            await relay.settled()
            [before] = vendor.records(fake, "dup_1")
            snapshot = repr(before)
            for copy in (end[1], duplicate(end[1])):  # the late live end changes nothing
                assert (await relay.post(copy)).status_code == 200
            rows = await relay.settled()
            assert len(rows) == 8 and all(r.state == "succeeded" for r in rows)
    [after] = vendor.records(fake, "dup_1")
    assert repr(after) == snapshot
    assert len(vendor.all_records(fake)) == 1
    assert vendor.outcome(after) == EXPECTED[vendor.name]["completed"]
    assert vendor.seconds(after) == (180.602 if vendor.name == "hubspot" else 181)
