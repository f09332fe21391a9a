"""relay.wildix: envelope validation and the normalized views, from real-shaped bodies."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from relay.wildix import Call, Event, InvalidEvent, parse
from tests.support.samples import fixtures_dir


def load(name: str) -> Event:
    return parse((fixtures_dir() / name).read_bytes())


def body(type_: str, data: Any, *, id_: str = "it_w1_1700000000.1", **extra: Any) -> bytes:
    envelope = {
        "id": id_,
        "pbx": "0a1b2c3d4e5f",
        "company": "it_w1",
        "time": 1700000000123,
        "type": type_,
        "integrationId": "abc123",
        "data": data,
        **extra,
    }
    return msgspec.json.encode(envelope)


def call_of(event: Event) -> Call:
    assert event.call is not None
    return event.call


def ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC).replace(microsecond=(value % 1000) * 1000)


FIXTURES = sorted(p.name for p in fixtures_dir().glob("*.json"))

LOCAL = {
    "type": "LOCAL",
    "phone": "214",
    "name": "Giulia Rossi",
    "email": "giulia.rossi@example.org",
    "userExtension": "214",
}


def remote(phone: str) -> dict[str, Any]:
    return {"type": "REMOTE", "phone": phone, "name": phone, "role": "CLIENT"}


# -- fixtures -----------------------------------------------------------------------------------


def test_fixture_set_is_present() -> None:
    assert len(FIXTURES) >= 11, f"fixtures not found in {fixtures_dir()}"


@pytest.mark.parametrize("name", FIXTURES)
def test_every_fixture_parses_and_keeps_its_bytes(name: str) -> None:
    raw = (fixtures_dir() / name).read_bytes()
    event = parse(raw)
    assert event.raw == raw
    assert event.data == msgspec.json.decode(raw)["data"]
    assert event.time.utcoffset() == timedelta(0)
    msgspec.json.encode(event.view())  # plain builtins all the way down
    family = event.type.split(":")[0]
    assert (event.call is not None) is (family == "call")
    assert (event.presence is not None) is (family == "presence")
    assert (event.sms is not None) is (family == "sms")
    # the cheap correlation id (ingest) and the normalized call's id are the same
    assert event.call_id == (event.call.id if event.call else None)


def test_call_completed_outbound_record() -> None:
    event = load("call_completed.json")
    assert event.id == "it_w204517_1764412210.77"
    assert event.integration_id == "q7m2xk"
    assert event.pbx == "0a1b2c3d4e5f" and event.company == "it_w204517"
    assert event.time == ms(1764412755302)
    call = call_of(event)
    assert event.call_id == call.id == "it_w204517_1764412210.77"
    assert (call.generation, call.phase) == ("current", "record")
    assert (call.direction, call.status) == ("outbound", "completed")
    assert call.remote_number == "+442071838750"
    assert call.duration == 180.602 and call.talk_time == 175.882 and call.wait_time == 0.31
    assert call.started_at == ms(1764412210458) and call.ended_at == ms(1764412391060)
    assert call.local is not None and call.local.email == "giulia.rossi@example.org"
    assert call.local.kind == "local" and call.local.extension == "214"
    assert call.local.group == "Tier 1" and call.local.device == "XBEES_WEB"
    assert call.remote is not None and call.remote.kind == "remote"
    assert call.trunk == "SIPTRUNK" and call.service_number == "214"
    assert call.end_cause == "16" and call.end_cause_text is None
    assert call.tags == ["External"] and call.recordings == []
    assert [leg.index for leg in call.legs] == [0]


def test_call_completed_missed_inbound() -> None:
    call = call_of(load("call_completed_missed_inbound.json"))
    assert (call.direction, call.status, call.phase) == ("inbound", "missed", "record")
    assert call.remote_number == "+33142685300"
    assert call.remote is not None and call.remote.number == "+33142685300"
    assert call.local is not None and call.local.name == "Giulia Rossi"
    assert call.talk_time == 0.0 and call.wait_time == 28.313
    assert call.service_number == "+442030950000" and call.destination == "214"
    assert call.end_cause == "19"


def test_live_progress_start() -> None:
    event = load("call_live_progress_start.json")
    call = call_of(event)
    assert (call.phase, call.status, call.direction) == ("start", "ringing", "outbound")
    assert call.remote is None  # callee not resolved yet, but remotePhone is
    assert call.remote_number == "+442071838750"
    assert call.started_at == datetime(2025, 11, 29, 10, 30, 10, 458000, tzinfo=UTC)
    assert call.ended_at is None and call.transcription is False


def test_live_progress_update_has_recording_in_progress() -> None:
    call = call_of(load("call_live_progress_update.json"))
    assert (call.phase, call.status, call.direction) == ("update", "talking", "outbound")
    assert call.remote is not None and call.remote.number == "+442071838750"
    assert call.trunk == "SIPTRUNK" and call.tags == ["External"]
    [rec] = call.recordings
    assert rec.file_name == "2025.11.29-10.30.14-214-+442071838750[pbx]-9c01a-0.wav"
    assert rec.started_at == ms(1764412214950)
    assert rec.ended_at is None  # end 0 = still recording
    assert rec.url is None


def test_live_completed_is_a_bare_end() -> None:
    event = load("call_live_completed.json")
    call = call_of(event)
    assert event.call_id == "it_w204517_1764412210.77"
    assert (call.phase, call.status, call.direction) == ("end", "ended", "unknown")
    assert call.legs == [] and call.local is None and call.remote is None
    assert call.remote_number is None and call.duration is None
    assert event.data["flows"] == 1


def test_one_call_shares_its_id_across_all_current_events() -> None:
    names = [
        "call_live_progress_start.json",
        "call_live_progress_update.json",
        "call_live_completed.json",
        "call_completed.json",
    ]
    events = [load(n) for n in names]
    assert {e.call_id for e in events} == {"it_w204517_1764412210.77"}
    assert [call_of(e).phase for e in events] == ["start", "update", "end", "record"]


@pytest.mark.parametrize(
    ("name", "phase", "status"),
    [
        ("legacy_call_start.json", "start", "ringing"),
        ("legacy_call_update.json", "update", "ringing"),
        ("legacy_call_end.json", "end", "missed"),
    ],
)
def test_legacy_trio(name: str, phase: str, status: str) -> None:
    call = call_of(load(name))
    assert call.generation == "legacy"
    assert (call.phase, call.status, call.direction) == (phase, status, "internal")
    assert call.id == "it_w204517_1764416001.12"
    assert call.remote_number is None and call.remote is None
    assert call.local is not None and call.local.number == "301"
    assert call.started_at is None and call.duration is None
    assert len(call.legs) == 1 and call.legs[0].destination == "214"


def test_legacy_end_fields() -> None:
    call = call_of(load("legacy_call_end.json"))
    assert call.end_cause == "21"
    assert call.end_cause_text == "Call Rejected"
    assert call.ended_by == "callee"
    assert call.legs[0].callee is not None and call.legs[0].callee.number == "214"
    assert call.legs[0].callee.device is None  # explicit null in the body


def test_presence_user() -> None:
    event = load("presence_user.json")
    assert event.call is None and event.sms is None and event.call_id is None
    p = event.presence
    assert p is not None
    assert (p.kind, p.extension, p.status, p.message) == ("user", "214", "dnd", "Training")
    assert p.email == "giulia.rossi@example.org"
    assert p.until == datetime(2025, 11, 29, 12, 0, tzinfo=UTC)


def test_presence_telephony() -> None:
    p = load("presence_telephony.json").presence
    assert p is not None
    assert (p.kind, p.extension, p.status) == ("telephony", "214", "ringing")
    assert p.until is None and p.message is None


def test_sms_status() -> None:
    sms = load("sms_status.json").sms
    assert sms is not None
    assert sms.id == "1764417200011kq2h7c9x0rbt5mz"
    assert (sms.from_number, sms.to_number) == ("+442030950000", "+447700900123")
    assert (sms.status, sms.channel, sms.parts) == ("delivered", "2-way-sms", 1)
    assert sms.reason is None  # "" means no reason


def test_view_is_plain_builtins() -> None:
    event = load("call_live_progress_update.json")
    view = event.view()
    assert set(view) == {
        "id",
        "type",
        "integration_id",
        "time",
        "pbx",
        "company",
        "call",
        "presence",
        "sms",
        "data",
    }
    assert view["time"] == "2025-11-29T10:30:14.980000Z"
    assert view["call"]["status"] == "talking"
    assert view["call"]["local"]["email"] == "giulia.rossi@example.org"
    assert view["call"]["recordings"][0]["ended_at"] is None
    assert view["presence"] is None and view["data"] == event.data
    assert msgspec.json.decode(msgspec.json.encode(view)) == view
    view["data"]["flows"].clear()  # a copy: templates cannot corrupt the event
    assert event.data["flows"]


def test_raw_is_the_exact_bytes_given() -> None:
    raw = (fixtures_dir() / "sms_status.json").read_bytes()
    assert parse(raw).raw is raw


# -- hand-written edge cases ----------------------------------------------------------------


def test_data_id_wins_over_envelope_id() -> None:
    data = {"id": "it_w9_1.0", "eventTrigger": "call.start", "flows": []}
    event = parse(body("call:live:progress", data, id_="it_w1_1.0"))
    assert event.id == "it_w1_1.0" and event.call_id == "it_w9_1.0"


def test_legacy_nulls_everywhere() -> None:
    data = {
        "status": None,
        "caller": None,
        "callee": None,
        "service": None,
        "destination": None,
        "trunkName": None,
        "queueName": None,
        "tags": None,
        "flags": None,
        "endCause": None,
        "endCauseStr": None,
        "endBy": None,
    }
    call = call_of(parse(body("call:update", data)))
    assert (call.phase, call.status, call.direction) == ("update", "unknown", "unknown")
    assert call.local is None and call.remote is None and call.tags == []
    assert call.id == "it_w1_1700000000.1"


def test_legacy_end_after_talking_is_completed_and_busy_is_busy() -> None:
    talked = call_of(parse(body("call:end", {"status": "TALKING", "caller": LOCAL})))
    assert talked.status == "completed"
    busy = call_of(parse(body("call:end", {"status": "CONNECTING", "endCause": "17"})))
    assert busy.status == "busy"


@pytest.mark.parametrize(
    ("data", "direction", "remote_number"),
    [
        ({"caller": remote("+33142685300"), "callee": LOCAL}, "inbound", "+33142685300"),
        ({"caller": LOCAL, "callee": remote("+442071838750")}, "outbound", "+442071838750"),
        ({"caller": LOCAL, "destination": "+442071838750"}, "outbound", "+442071838750"),
        ({"caller": LOCAL, "destination": "00442071838750"}, "outbound", "00442071838750"),
        ({"caller": LOCAL, "destination": "02071838750"}, "outbound", "02071838750"),
        ({"caller": LOCAL, "destination": "301", "trunkName": "SIP"}, "outbound", None),
        ({"caller": LOCAL, "destination": "10020"}, "internal", None),
        ({"caller": LOCAL, "callee": LOCAL}, "internal", None),
        ({}, "unknown", None),
    ],
)
def test_legacy_direction(data: dict[str, Any], direction: str, remote_number: str | None) -> None:
    call = call_of(parse(body("call:start", data)))
    assert call.direction == direction
    assert call.remote_number == remote_number


@pytest.mark.parametrize("flows", [3, None, "x", [], [None, 5], {}])
def test_odd_flows_never_raise(flows: Any) -> None:
    call = call_of(parse(body("call:completed", {"flows": flows})))
    assert call.phase == "record" and call.direction == "unknown"
    assert call.local is None and call.remote_number is None


def test_missing_callee_and_nulls_inside_a_flow() -> None:
    flow = {
        "flowIndex": None,
        "caller": LOCAL,
        "direction": None,
        "status": None,
        "tags": None,
        "recordings": None,
        "recordingsData": None,
        "duration": None,
        "talkTime": "12",
        "remotePhone": None,
        "startTime": None,
    }
    call = call_of(parse(body("call:live:progress", {"flows": [flow]})))
    assert (call.phase, call.status, call.direction) == ("update", "unknown", "unknown")
    assert call.local is not None and call.remote is None and call.remote_number is None
    assert call.duration is None and call.talk_time is None
    assert call.legs[0].index == 0 and call.legs[0].tags == []


@pytest.mark.parametrize("name", [n for n in FIXTURES if "call" in n])
def test_weird_values_in_real_bodies_never_raise(name: str) -> None:
    """Replace each node of a real body, one at a time, with junk: parsing must still succeed."""
    good = msgspec.json.decode((fixtures_dir() / name).read_bytes())
    leaves: list[tuple[Any, ...]] = []

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in items:
            if isinstance(v, dict | list) and v:
                walk(v, (*path, k))
            leaves.append((*path, k))

    walk(good["data"], ())
    assert len(leaves) > 5
    junks: list[Any] = [None, 0, -1, True, "", "x", [], {}, 1e300, 10**400, [None]]
    for junk in junks:
        for path in leaves:
            data = copy.deepcopy(good["data"])
            node = data
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = junk
            event = parse(body(good["type"], data))
            assert event.call is not None, (path, junk)  # built, not rescued by the safety net
            assert event.call_id == event.call.id, (path, junk)


def test_transfer_primary_leg_and_totals() -> None:
    legs = [
        {
            "flowIndex": 0,
            "caller": remote("+33142685300"),
            "callee": LOCAL,
            "direction": "INBOUND",
            "callStatus": "MISSED",
            "startTime": 1700000000000,
            "endTime": 1700000010000,
            "duration": 10000,
            "talkTime": 0,
            "waitTime": 10000,
            "remotePhone": "+33142685300",
            "tags": ["Queue"],
            "queueName": "Support",
        },
        {
            "flowIndex": 1,
            "caller": remote("+33142685300"),
            "callee": {**LOCAL, "phone": "215", "name": "Luca Verdi"},
            "direction": "INBOUND",
            "callStatus": "COMPLETED",
            "startTime": 1700000010000,
            "endTime": 1700000070500,
            "duration": 60500,
            "talkTime": 60000,
            "waitTime": 500,
            "tags": ["Queue", "VIP"],
            "recordingsData": [
                {
                    "fileName": "b.wav",
                    "start": 1700000010500,
                    "end": 1700000070500,
                    "url": "https://pbx/b.wav",
                }
            ],
        },
    ]
    call = call_of(parse(body("call:completed", {"flows": legs, "endCause": "16"})))
    assert [leg.index for leg in call.legs] == [0, 1]
    assert [leg.status for leg in call.legs] == ["missed", "completed"]
    assert call.legs[1].local is not None and call.legs[1].local.name == "Luca Verdi"
    # primary = first leg with a remote party: direction/parties/queue from leg 0...
    assert call.direction == "inbound" and call.queue == "Support"
    assert call.local is not None and call.local.name == "Giulia Rossi"
    # ...but answered on a later leg is not missed, and totals sum the legs
    assert call.status == "completed"
    assert (call.duration, call.talk_time, call.wait_time) == (70.5, 60.0, 10.5)
    assert call.started_at == ms(1700000000000) and call.ended_at == ms(1700000070500)
    assert call.tags == ["Queue", "VIP"]
    assert [(r.file_name, r.url) for r in call.recordings] == [("b.wav", "https://pbx/b.wav")]
    assert call.recordings[0].ended_at == ms(1700000070500)


def test_primary_leg_is_the_one_with_a_remote_party() -> None:
    internal = {"caller": LOCAL, "callee": {**LOCAL, "phone": "215"}, "direction": "INTERNAL"}
    external = {
        "caller": LOCAL,
        "callee": remote("+4930901820"),
        "direction": "OUTBOUND",
        "status": "TALKING",
        "remotePhone": "+4930901820",
    }
    call = call_of(parse(body("call:live:progress", {"flows": [internal, external]})))
    assert (call.direction, call.status) == ("outbound", "talking")
    assert call.remote_number == "+4930901820"
    assert call.legs[0].remote_number is None


def test_record_busy_from_end_cause_17() -> None:
    flow = {"caller": LOCAL, "callee": remote("+4930901820"), "callStatus": "MISSED"}
    call = call_of(parse(body("call:completed", {"flows": [flow], "endCause": "17"})))
    assert call.status == "busy"


def test_direction_follows_each_event_internal_then_outbound() -> None:
    first = {
        "caller": LOCAL,
        "direction": "INTERNAL",
        "status": "CONNECTING",
        "remotePhone": "+159255512345",
        "destination": "+159255512345",
    }
    second = {
        **first,
        "direction": "OUTBOUND",
        "status": "TALKING",
        "callee": remote("+159255512345"),
    }
    earlier = {"eventTrigger": "call.update", "flows": [first]}
    a = call_of(parse(body("call:live:progress", earlier)))
    later = {"eventTrigger": "call.transcription", "flows": [second]}
    b = call_of(parse(body("call:live:progress", later)))
    assert (a.direction, a.status, a.remote_number) == ("internal", "ringing", None)
    assert a.destination == "+159255512345"  # the number is not lost while INTERNAL
    assert (b.direction, b.status, b.remote_number) == ("outbound", "talking", "+159255512345")
    assert (a.phase, b.phase) == ("update", "update") and b.transcription is True


def test_undefined_direction_and_unknown_trigger() -> None:
    flow = {"caller": LOCAL, "direction": "UNDEFINED", "status": "SOMETHING_NEW"}
    call = call_of(parse(body("call:live:progress", {"eventTrigger": "call.x", "flows": [flow]})))
    assert (call.phase, call.direction, call.status) == ("update", "unknown", "unknown")


def test_other_call_types_build_from_data_call() -> None:
    data = {
        "call": {
            "id": "it_w1_1700000000.1",
            "caller": LOCAL,
            "callee": remote("+4930901820"),
            "remotePhone": "+4930901820",
            "direction": "OUTBOUND",
            "talkTime": 42000,
        },
        "chunks": [{"name": "Giulia", "text": "Hello"}],
    }
    event = parse(body("call:transcription:completed", data))
    call = call_of(event)
    assert (call.phase, call.direction, call.remote_number) == ("update", "outbound", "+4930901820")
    assert call.talk_time == 42.0 and call.transcription is True
    assert event.data["chunks"][0]["text"] == "Hello"


def test_other_call_types_with_nothing_call_like_still_correlate() -> None:
    call = call_of(parse(body("call:summary:completed", ["not", "an", "object"])))
    assert call.id == "it_w1_1700000000.1" and call.phase == "update" and call.legs == []


def test_unknown_type_is_a_generic_event() -> None:
    data = {"channel": {"channelId": "c1"}, "members": []}
    raw = body("chat:channel:created", data, pbx=None)
    event = parse(raw)
    assert event.type == "chat:channel:created"
    assert event.call is None and event.presence is None and event.sms is None
    assert event.data == data and event.pbx is None and event.raw == raw
    assert event.view()["data"] == data


def test_pbx_and_company_are_optional() -> None:
    raw = b'{"id":"c1","type":"conference:live:progress","time":1,"integrationId":"i","data":{}}'
    event = parse(raw)
    assert event.pbx is None and event.company is None
    assert event.time == datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC)


def test_presence_conference_flags() -> None:
    data = {
        "extension": "230",
        "isJoined": True,
        "isLeaved": False,
        "participant": {"email": "j@example.org"},
    }
    p = parse(body("presence:conference", data)).presence
    assert p is not None
    assert (p.kind, p.status, p.extension) == ("conference", "joined", "230")
    assert p.email == "j@example.org"  # from the participant when not at the top


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "body is not JSON"),
        (b"", "body is not JSON"),
        (b'{"id": "a"', "body is not JSON"),
        (b"[1, 2]", "body is not a JSON object"),
        (b'"text"', "body is not a JSON object"),
        (b'{"id":"a","type":"t","time":1,"data":{}}', "missing field 'integrationId'"),
        (b'{"type":"t","time":1,"integrationId":"i","data":{}}', "missing field 'id'"),
        (b'{"id":"a","type":"t","time":1,"integrationId":"i"}', "missing field 'data'"),
        (b'{"id":"a","type":5,"time":1,"integrationId":"i","data":{}}', "field 'type' must be"),
        (b'{"id":"a","type":"","time":1,"integrationId":"i","data":{}}', "must not be empty"),
        (b'{"id":"a","type":"t","time":1.5,"integrationId":"i","data":{}}', "field 'time' must"),
        (b'{"id":"a","type":"t","time":"1","integrationId":"i","data":{}}', "field 'time' must"),
        (b'{"id":"a","type":"t","time":true,"integrationId":"i","data":{}}', "field 'time' must"),
        (b'{"id":"a","type":"t","time":1,"integrationId":"i","data":{},"pbx":1}', "'pbx'"),
        (
            b'{"id":"a","type":"t","time":99999999999999999999,"integrationId":"i","data":{}}',
            "out of range",
        ),
        (
            b'{"id":"a","type":"t","time":9999999999999999,"integrationId":"i","data":{}}',
            "out of range",
        ),
        (
            b'{"id":"a","type":"t","time":1,"integrationId":"i","data":1e400}',
            "body has an unsupported value: Number out of range",
        ),
    ],
)
def test_invalid_envelopes(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidEvent, match=re.escape(message)) as info:
        parse(raw)
    assert isinstance(info.value, ValueError)
    assert len(str(info.value)) < 80


def test_data_may_be_any_json_value() -> None:
    values: list[Any] = [None, 3, "x", []]
    for data in values:
        event = parse(body("presence:user", data))
        assert event.data == data
        assert event.presence is not None and event.presence.status is None


def test_a_normalizer_bug_keeps_the_event(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import relay.wildix.envelope as wildix

    def boom(*args: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(wildix, "call_view", boom)
    raw = (fixtures_dir() / "call_completed.json").read_bytes()
    event = parse(raw)
    assert event.call is None and event.raw == raw
    assert "could not normalize call:completed" in caplog.text
    # the correlation id does not depend on the normalizer: ordering still holds
    assert event.call_id == msgspec.json.decode(raw)["data"]["id"]


def test_buffer_bodies_are_stored_as_bytes() -> None:
    raw = (fixtures_dir() / "sms_status.json").read_bytes()
    event = parse(bytearray(raw))  # type: ignore[arg-type]
    assert type(event.raw) is bytes and event.raw == raw
