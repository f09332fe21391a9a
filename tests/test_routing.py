"""relay.routing: type globs, the `where` grammar, and route selection over fixture events."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from relay.routing import (
    ROOTS,
    WhereError,
    check_route,
    check_where,
    event_matches,
    match,
    where_matches,
)
from relay.wildix import Call, Event, normalize, parse
from relay.wildix.views import EVENT_TYPES, VIEWS, view_of
from tests.support.samples import fixtures_dir


def load(name: str) -> Event:
    return parse((fixtures_dir() / name).read_bytes())


class Route(msgspec.Struct, frozen=True):
    connector: str
    events: list[str]
    where: dict[str, Any] | None = None


@pytest.fixture(scope="module")
def completed() -> dict[str, Any]:
    return load("call_completed.json").view()


@pytest.fixture(scope="module")
def missed() -> dict[str, Any]:
    return load("call_completed_missed_inbound.json").view()


# -- event type globs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "event_type", "expected"),
    [
        (["call:*"], "call:live:progress", True),
        (["call:*"], "call:end", True),
        (["call:live:*"], "call:completed", False),
        (["call:completed"], "call:completed", True),
        (["Call:*"], "call:start", False),  # case-sensitive
        (["presence:*", "sms:status"], "sms:status", True),
        (["*"], "chat:channel:created", True),
        (["call:?????"], "call:start", True),
        ([], "call:start", False),
        ("call:*", "call:start", True),  # a bare string is one pattern, not characters
    ],
)
def test_event_matches(patterns: Any, event_type: str, expected: bool) -> None:
    assert event_matches(patterns, event_type) is expected


# -- where over real views --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "on_completed", "on_missed"),
    [
        (None, True, True),
        ({}, True, True),
        ({"call.direction": "outbound"}, True, False),
        ({"call.status": ["missed", "busy"]}, False, True),
        ({"call.status": {"in": ["missed", "busy"]}}, False, True),
        ({"call.status": {"eq": "completed"}}, True, False),
        ({"call.status": {"not": "missed"}}, True, False),
        ({"call.status": {"not": ["missed", "completed"]}}, False, False),
        ({"call.remote_number": {"prefix": "+44"}}, True, False),
        ({"call.remote_number": {"prefix": "+3"}}, False, True),
        ({"call.local.email": "giulia.rossi@example.org"}, True, True),  # nested path
        ({"call.local.email": "Giulia.Rossi@example.org"}, False, False),  # exact strings
        ({"call.queue": {"exists": False}}, True, True),
        ({"call.queue": {"exists": True}}, False, False),
        ({"call.queue": None}, True, True),
        ({"call.tags": "External"}, True, False),  # list value: element match
        ({"call.tags": {"not": "External"}}, False, True),
        ({"call.legs.0.callee.number": "214"}, False, True),  # numeric segment indexes a list
        ({"call.legs.5.callee.number": {"exists": True}}, False, False),
        ({"data.flows.0.trunkDirection": "incoming"}, False, True),  # raw data is reachable
        ({"data.endCause": "19"}, False, True),
        ({"call.transcription": False}, True, True),  # bool scalar
        ({"call.talk_time": 0}, False, True),  # int vs float compares numerically
        ({"pbx": "0a1b2c3d4e5f", "integration_id": "q7m2xk"}, True, True),
        ({"call.direction": "inbound", "call.status": "missed"}, False, True),  # AND
        ({"call.direction": "inbound", "call.status": "completed"}, False, False),
        ({"call.status": {"in": ["missed", "completed"], "not": "completed"}}, False, True),
        ({"type": "call:completed", "presence": None}, True, True),
    ],
)
def test_where_over_fixture_views(
    where: dict[str, Any] | None,
    on_completed: bool,
    on_missed: bool,
    completed: dict[str, Any],
    missed: dict[str, Any],
) -> None:
    check_where(where)
    assert where_matches(where, completed) is on_completed
    assert where_matches(where, missed) is on_missed


@pytest.mark.parametrize(
    "where",
    [
        {"call.nope.deeper": {"exists": False}},  # a missing path reads as None
        {"call.transcription": 0},  # a bool is not the int 0
        {"call.end_cause": 16},  # "16" is a string: no coercion
    ],
)
def test_evaluation_never_coerces_what_check_where_refuses(
    where: dict[str, Any], completed: dict[str, Any], missed: dict[str, Any]
) -> None:
    """Config load refuses these (tests/test_route_validation.py); evaluated anyway, a missing
    path reads as None and values compare by type."""
    with pytest.raises(WhereError):
        check_where(where)
    expected = "exists" in str(where)
    assert where_matches(where, completed) is expected
    assert where_matches(where, missed) is expected


def test_where_on_presence_and_sms() -> None:
    presence = load("presence_user.json").view()
    sms = load("sms_status.json").view()
    assert where_matches({"presence.status": "dnd", "presence.kind": "user"}, presence)
    assert not where_matches({"call.direction": {"exists": True}}, presence)
    assert where_matches({"sms.status": "delivered", "sms.parts": 1}, sms)
    assert not where_matches({"sms.parts": True}, sms)
    assert where_matches({"sms.to_number": {"prefix": "+447"}}, sms)


# -- check_where errors name the key ----------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "named"),
    [
        ("call.direction=inbound", "where: must be a mapping"),
        ({"direction": "inbound"}, "where.direction: unknown field 'direction'"),
        ({"raw": {"exists": True}}, "where.raw: unknown field 'raw'"),
        ({"call..status": "x"}, "where.call..status: empty path segment"),
        ({"": "x"}, "where: key ''"),
        ({"call.status": {"regex": ".*"}}, "where.call.status.regex: unknown operator"),
        ({"call.status": {}}, "where.call.status: empty operator mapping"),
        ({"call.status": {"in": "missed"}}, "where.call.status.in: expected a list"),
        ({"call.status": {"in": [["x"]]}}, "where.call.status.in: list items must be scalars"),
        ({"call.status": {"eq": ["x"]}}, "where.call.status.eq: expected a scalar"),
        ({"call.status": {"not": {"a": 1}}}, "where.call.status.not: expected a scalar or a list"),
        ({"call.remote_number": {"prefix": 44}}, "where.call.remote_number.prefix: expected a str"),
        ({"call.queue": {"exists": "yes"}}, "where.call.queue.exists: expected true or false"),
        ({"call.tags": [{"a": 1}]}, "where.call.tags: list items must be scalars"),
        ({"call.tags": {1, 2}}, "where.call.tags: expected a scalar, a list or an operator"),
    ],
)
def test_check_where_errors_name_the_key(where: Any, named: str) -> None:
    with pytest.raises(WhereError) as info:
        check_where(where)
    assert named in str(info.value)
    assert isinstance(info.value, ValueError)


def test_valid_where_passes_check() -> None:
    check_where(None)
    check_where(
        {
            "call.direction": "inbound",
            "call.status": ["missed", "busy"],
            "call.remote_number": {"prefix": "+44", "not": ["+441", "+442"], "exists": True},
            "data.flows.0.callStatus": {"eq": "MISSED", "in": ["MISSED"]},
            "sms.parts": 1,
            "call.duration": 1.5,
        }
    )


def test_where_matches_rejects_invalid_filters_too() -> None:
    with pytest.raises(WhereError, match=r"where\.nope"):
        where_matches({"nope": 1}, {})


# -- match() -----------------------------------------------------------------------------------


ROUTES = [
    Route("crm", ["call:completed"], {"call.direction": ["inbound", "outbound"]}),
    Route("slack-missed", ["call:*"], {"call.status": "missed"}),
    Route("audit", ["*"]),
    Route("presence", ["presence:*"], {"presence.status": {"not": "registered"}}),
    Route("uk-only", ["call:completed", "call:live:*"], {"call.remote_number": {"prefix": "+44"}}),
    Route("legacy", ["call:start", "call:update", "call:end"], {"call.direction": "internal"}),
]


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("call_completed.json", ["crm", "audit", "uk-only"]),
        ("call_completed_missed_inbound.json", ["crm", "slack-missed", "audit"]),
        ("call_live_progress_start.json", ["audit", "uk-only"]),
        ("call_live_completed.json", ["audit"]),
        ("legacy_call_end.json", ["slack-missed", "audit", "legacy"]),
        ("legacy_call_start.json", ["audit", "legacy"]),
        ("presence_user.json", ["audit", "presence"]),
        ("presence_telephony.json", ["audit", "presence"]),
        ("sms_status.json", ["audit"]),
    ],
)
def test_match_selects_routes_in_config_order(fixture: str, expected: list[str]) -> None:
    selected = match(ROUTES, load(fixture))
    assert [r.connector for r in selected] == expected
    assert all(r in ROUTES for r in selected)


def test_match_keeps_duplicates_and_order() -> None:
    routes = [Route("b", ["*"]), Route("a", ["sms:*"]), Route("b", ["sms:status"])]
    assert [r.connector for r in match(routes, load("sms_status.json"))] == ["b", "a", "b"]


def test_the_routes_above_pass_the_config_checks() -> None:
    for route in ROUTES:
        check_route(route.events, route.where)


def test_match_with_no_routes() -> None:
    assert match([], load("sms_status.json")) == []


# -- the route checks read the views: these keep them honest --------------------------------------


SAMPLES = sorted(p.name for p in fixtures_dir().glob("*.json"))


def event_of(event_type: str, data: Any = None) -> Event:
    return Event(
        id="x",
        type=event_type,
        integration_id="q7m2xk",
        time=datetime(2025, 1, 1, tzinfo=UTC),
        pbx=None,
        company=None,
        data={} if data is None else data,
        raw=b"",
    )


@pytest.mark.parametrize("name", SAMPLES)
def test_the_roots_are_what_a_view_holds(name: str) -> None:
    assert set(load(name).view()) == ROOTS


def test_every_sample_is_a_known_event_type() -> None:
    assert {load(name).type for name in SAMPLES} <= set(EVENT_TYPES)


def test_every_type_the_normalizer_names_is_known() -> None:
    for table in ("_LEGACY_PHASES", "_CURRENT_PHASES"):
        assert set(getattr(normalize, table)) <= set(EVENT_TYPES), table


@pytest.mark.parametrize(
    "event_type", [*EVENT_TYPES, "call:voicemail:new", "voicemail:new", "presence:away", "sms:x"]
)
def test_the_view_each_type_carries_is_the_one_the_event_builds(event_type: str) -> None:
    event = event_of(event_type)
    built = {name for name in VIEWS if getattr(event, name) is not None}
    expected = view_of(event_type)
    assert built == ({expected} if expected else set())


@pytest.mark.parametrize("name", SAMPLES)
def test_the_enums_cover_what_the_normalizer_produces(name: str) -> None:
    """Each sample's data read as every known type: every view value fits its declared type
    (the Literals route checks accept), so a valid filter is never refused."""
    data = load(name).data
    for event_type in EVENT_TYPES:
        view = event_of(event_type, data).view()
        for root, struct in VIEWS.items():
            if view[root] is not None:
                msgspec.convert(view[root], struct)


def test_the_docs_list_the_known_types_and_the_enums() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    listed = doc.split("The known types are ", 1)[1].split("\n\n", 1)[0]
    assert set(re.findall(r"`([^`]+)`", listed)) == set(EVENT_TYPES)
    for field in ("direction", "status", "phase"):
        info = next(f.type for f in msgspec.inspect.type_info(Call).fields if f.name == field)
        assert isinstance(info, msgspec.inspect.LiteralType)
        written = doc.split(f"`{field}` (", 1)[1].split(")", 1)[0]
        assert set(written.replace(",", " ").split()) == set(info.values), field
