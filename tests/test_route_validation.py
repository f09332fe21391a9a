"""Routes that can never match are refused at config load, naming the key path.

Each of these once passed `relay check-config` and then routed nothing: the deliveries were
dropped without a word. The checks read the view structs, so they hold for any field added later.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.config import ConfigError, Settings, parse_config
from relay.registry import connector_types
from tests.support.cli import run, write

TYPES = connector_types()
ROOT = Path(__file__).resolve().parents[1]
ROUTE = "$.integrations.q7m2xk.routes[0]"


def config(events: list[str], where: dict[str, Any] | None = None) -> dict[str, Any]:
    route: dict[str, Any] = {"connector": "out", "events": events}
    if where is not None:
        route["where"] = where
    return {
        "database": {"url": "sqlite+aiosqlite:///./unused.db"},
        "connectors": {"out": {"type": "log"}},
        "integrations": {"q7m2xk": {"secret": "a-wildix-secret", "routes": [route]}},
    }


def load(events: list[str], where: dict[str, Any] | None = None) -> Settings:
    return parse_config(yaml.safe_dump(config(events, where)), connector_types=TYPES, env={})


# The five mistakes of issue 17: (events, where, the key path named, what the message says).
SILENT_DROPS = [
    (["call:*"], {"call.stauts": "missed"}, "where.call.stauts", "did you mean 'status'"),
    (["call:*"], {"call.status": "mised"}, "where.call.status", "did you mean 'missed'"),
    (["call:*"], {"call.end_cause": 16}, "where.call.end_cause", 'quote it ("16")'),
    (["cal:*"], None, "events[0]", "did you mean 'call:*'"),
    (["call:["], None, "events[0]", "unclosed '['"),
]


def test_an_unknown_field_lists_the_fields_of_the_view() -> None:
    with pytest.raises(ConfigError) as info:
        load(["call:*"], {"call.stauts": "missed"})
    assert str(info.value).startswith(
        f"{ROUTE}.where.call.stauts: unknown field 'stauts' for call events"
    )
    assert "direction, duration" in str(info.value)


# More of the same kind.
MISTAKES = [
    # a path for a view the route's events never carry
    (["presence:*"], {"call.status": "missed"}, "where.call.status", "never carry a call"),
    (["sms:status"], {"presence.kind": "user"}, "where.presence.kind", "never carry a"),
    (["conference:*"], {"call.direction": "inbound"}, "where.call.direction", "never carry"),
    # nested fields, lists, objects
    (["*"], {"call.local.emial": "a@b.c"}, "where.call.local.emial", "in call.local"),
    (["*"], {"call.legs.status": "missed"}, "where.call.legs.status", "call.legs.0.status"),
    (["*"], {"call.legs.0.stat": "missed"}, "where.call.legs.0.stat", "'status'"),
    (["*"], {"call.local": "230"}, "where.call.local", "is an object"),
    (["*"], {"call.status.code": 1}, "where.call.status.code", "no field 'code'"),
    (["*"], {"directon": "inbound"}, "where.directon", "unknown field 'directon'"),
    # enums and types, wherever the value is written
    (["call:*"], {"call.direction": ["inbound", "inbund"]}, "where.call.direction[1]", "mean"),
    (["call:*"], {"call.status": {"in": ["busy", "mised"]}}, "where.call.status.in[1]", ""),
    (["call:*"], {"call.status": {"not": "mised"}}, "where.call.status.not", "'missed'"),
    (["call:*"], {"call.phase": {"eq": "ended"}}, "where.call.phase.eq", "not a value"),
    (["call:*"], {"call.legs.0.status": "mised"}, "where.call.legs.0.status", "'missed'"),
    (["presence:*"], {"presence.kind": "usr"}, "where.presence.kind", "'user'"),
    (["call:*"], {"call.status": {"prefix": "x"}}, "where.call.status.prefix", "starts"),
    (["call:*"], {"call.duration": {"prefix": "1"}}, "where.call.duration.prefix", "number"),
    (["call:*"], {"call.duration": "60"}, "where.call.duration", "holds a number"),
    (["call:*"], {"call.transcription": 1}, "where.call.transcription", "true or false"),
    (["call:*"], {"call.tags": 7}, "where.call.tags", "quote it"),
    (["sms:*"], {"sms.parts": "1"}, "where.sms.parts", "holds a number"),
    # an event type by equality that the route never receives
    (["*"], {"type": "call:complted"}, "where.type", "did you mean 'call:completed'"),
    (["call:*"], {"type": ["call:end", "sms:status"]}, "where.type[1]", "never receives"),
    (["call:*"], {"type": {"in": ["presence:user"]}}, "where.type.in[0]", "never receives"),
    # globs
    (["call:*", "presnce:*"], None, "events[1]", "'presence:*'"),
    (["call:live:progres"], None, "events[0]", "'call:live:progress'"),
    (["Call:*"], None, "events[0]", "matches no Wildix event type"),
    (["call:[!a-z"], None, "events[0]", "unclosed '['"),
    ([""], None, "events[0]", "empty"),
]


@pytest.mark.parametrize(("events", "where", "path", "words"), [*SILENT_DROPS, *MISTAKES])
def test_a_route_that_can_never_match_is_refused_with_its_key_path(
    events: list[str], where: dict[str, Any] | None, path: str, words: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(events, where)
    assert info.value.path == f"{ROUTE}.{path}", str(info.value)
    assert words in info.value.message


@pytest.mark.parametrize(
    ("events", "where"),
    [
        (["*"], {"call.status": "missed", "presence.status": "dnd", "sms.status": "failed"}),
        (["call:*"], {"call.status": ["missed", "busy"], "call.direction": {"not": "internal"}}),
        (["call:completed"], {"call.end_cause": "16", "call.tags": "External"}),
        (["call:*"], {"call.status": {"prefix": "mis"}, "call.remote_number": {"prefix": "+44"}}),
        (["call:*"], {"call.legs.0.status": "missed", "call.legs.1.callee.number": "214"}),
        (["call:*"], {"call.local": {"exists": True}, "call.queue": None, "call.duration": 60}),
        (["call:*"], {"call.talk_time": 1.5, "call.transcription": True}),
        (["call:*"], {"call.started_at": {"prefix": "2025-"}}),  # datetimes are ISO text
        (["presence:user"], {"presence.kind": "user", "presence.status": "anything-wildix-sends"}),
        (["sms:status"], {"sms.parts": 2}),
        (["*"], {"data.anything.0.goes": 16, "type": "call:end", "pbx": None}),
        (["call:live:*", "call:?????"], {"call.phase": "start"}),
        (["call:[es]*"], None),
        (["chat:channel:created", "conference:live:*"], {"data.channel.subject": "x"}),
        # types Wildix has not shipped yet, marked as such
        (["voicemail:*?future"], {"data.box": "1"}),
        (["call:*", "call:voicemail:*?future"], {"call.status": "missed"}),
        (["call:voicemail:*?future"], {"call.status": "missed"}),  # any call: type has a call
        (["call:*?future"], None),  # a known family marked future is fine too
        (["*", "voicemail:*?future"], {"type": {"in": ["voicemail:new", "call:end"]}}),
        (["call:*"], {"type": {"not": "call:update"}}),
    ],
)
def test_routes_that_can_match_load(events: list[str], where: dict[str, Any] | None) -> None:
    route = load(events, where).integrations["q7m2xk"].routes[0]
    assert route.events == events and route.where == where


def test_a_future_glob_is_still_syntax_checked() -> None:
    with pytest.raises(ConfigError) as info:
        load(["voicemail:[*?future"])
    assert info.value.path == f"{ROUTE}.events[0]"
    assert "unclosed '['" in info.value.message


def test_a_future_glob_cannot_give_a_view_its_types_never_carry() -> None:
    """Only ``call:`` types carry a view whatever their name: a new presence type has none."""
    with pytest.raises(ConfigError) as info:
        load(["voicemail:*?future"], {"call.status": "missed"})
    assert info.value.path == f"{ROUTE}.where.call.status"


# -- the real command line ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "events", "where", "named"),
    [
        ("check-config", ["call:*"], {"call.stauts": "missed"}, "where.call.stauts"),
        ("check-config", ["cal:*"], None, "events[0]: 'cal:*' matches no Wildix event type"),
        ("serve", ["call:*"], {"call.status": "mised"}, "where.call.status: 'mised'"),
    ],
)
def test_the_cli_refuses_the_config_and_names_the_key_path(
    tmp_path: Path, command: str, events: list[str], where: dict[str, Any] | None, named: str
) -> None:
    cfg = write(tmp_path / "relay.yaml", config(events, where))
    result = run(command, config=cfg)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"config error: {ROUTE}.{named}" in result.stderr


def test_check_config_accepts_a_future_glob_and_shows_it(tmp_path: Path) -> None:
    cfg = write(tmp_path / "relay.yaml", config(["call:*", "voicemail:*?future"]))
    result = run("check-config", config=cfg)
    assert result.returncode == 0, result.stderr
    assert "→ out: call:*, voicemail:*?future" in result.stdout


# -- every route the project writes still loads --------------------------------------------------


def documented_routes() -> list[tuple[str, dict[str, Any]]]:
    """Every route in a YAML block of README.md and docs/*.md: (where it is written, route)."""
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        for block in re.findall(r"^```ya?ml\n(.*?)^```", text, re.M | re.S):
            found += [(doc.name, r) for r in routes_in(yaml.safe_load(block))]
    return found


def routes_in(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        if isinstance(node.get("routes"), list):
            return [r for r in node["routes"] if isinstance(r, dict) and "connector" in r]
        return [r for v in node.values() for r in routes_in(v)]
    return [r for v in node for r in routes_in(v)] if isinstance(node, list) else []


DOCUMENTED = documented_routes()


def test_the_docs_have_routes_to_check() -> None:
    assert len(DOCUMENTED) >= 8
    assert any("where" in r for _, r in DOCUMENTED)


@pytest.mark.parametrize(
    ("doc", "route"), DOCUMENTED, ids=[f"{d}:{r['connector']}" for d, r in DOCUMENTED]
)
def test_every_documented_route_loads(doc: str, route: dict[str, Any]) -> None:
    load(route.get("events", ["*"]), route.get("where"))
