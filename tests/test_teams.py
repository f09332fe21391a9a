"""The ``teams`` connector against a loopback Workflows webhook (tests/fakes/teams.py).

The full-path tests post signed Wildix bodies to a running relay and assert on the cards the
flow received; the focused ones drive ``deliver()`` with a real context and store.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from relay import PermanentError, RetryableError
from relay.messages import teams_text
from relay.wildix import parse
from tests.fakes.teams import CARD_TYPE, Flow, TeamsFake
from tests.support.connectors import build
from tests.support.hostile import HOSTILE_NAME, hostile_event, strings
from tests.support.relay import RunningRelay, make_settings, run_relay
from tests.support.samples import fixture

pytest_plugins = ("tests.test_connectors_builtin",)  # its store, http and ctx_for fixtures

LIFECYCLE = ("call_live_progress_start", "call_live_progress_update", "call_live_completed")
# What Teams would parse in a TextBlock or Fact: a markdown link or reference, an <at> mention
# or <url> autolink, a bare URL, a typed @channel, a {{DATE()}} function, emphasis.
MD_LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]*)\)")
OUR_DATE = re.compile(r"\{\{DATE\((\S+Z), SHORT\)\}\} \{\{TIME\(\1\)\}\}")  # teams_date's own
PARSED = re.compile(
    r"\]\(|\]:|\]\[|<at\b|<[a-z]+:|://|\bwww\.|@(channel|here|everyone)\b|\{\{", re.I
)


def hook(teams: TeamsFake, flow: Flow, **extra: Any) -> dict[str, Any]:
    return {"type": "teams", "webhook_url": teams.webhook_url(flow), **extra}


def reencoded(name: str) -> bytes:
    """The same event as other bytes: a duplicate that ingest cannot recognise by its hash."""
    return json.dumps(json.loads(fixture(name)), indent=1).encode()


def title(card: dict[str, Any]) -> str:
    return str(card["body"][0]["text"])


def facts(card: dict[str, Any]) -> dict[str, str]:
    return {f["title"]: f["value"] for f in card["body"][1]["facts"]}


def links(card: dict[str, Any]) -> list[str]:
    return [url for text in strings(card) for _, url in MD_LINK.findall(text)]


def assert_inert(card: dict[str, Any], allowed_links: set[str]) -> None:
    """No string holds a link but the allowed ones, a mention, a bare link or a styled name."""
    for text in strings(card):
        rest = MD_LINK.sub(lambda m: "" if m[2] in allowed_links else m[0], text)
        rest = OUR_DATE.sub("", rest)
        assert not PARSED.search(rest.replace("http://adaptivecards.io/schemas", "")), text
        assert "*bold*" not in text and "javascript:" not in text.lower(), text


@pytest.fixture
async def teams() -> Any:
    async with TeamsFake() as fake:
        yield fake


# -- one post per call -----------------------------------------------------------------------


async def test_one_card_per_call_on_the_final_record_and_redelivery_posts_nothing(
    db_url: str, teams: TeamsFake
) -> None:
    flow = teams.flow("Support")
    async with run_relay(make_settings(db_url, {"calls": hook(teams, flow)})) as relay:
        for name in (*LIFECYCLE, "call_completed", "call_completed_missed_inbound"):
            assert (await relay.post(fixture(name))).status_code == 200
        await relay.settled()
        await relay.post(reencoded("call_completed"))  # passes ingest: a new event, same call
        await relay.post(reencoded("call_completed_missed_inbound"))
        rows = await relay.settled()
        assert len(rows) == 7 and {r.state for r in rows} == {"succeeded"}

    assert [(h.status, h.error) for h in teams.hits] == [(202, None)] * 2  # two calls, two posts
    summary, missed = sorted(flow.cards, key=title)
    assert title(summary) == "✅ Outbound call · answered"
    assert facts(summary)["From"] == "Giulia Rossi (ext. 214)"
    assert facts(summary)["Duration"] == "3:01 (talked 2:56)"
    assert title(missed) == "❌ Missed call from +33142685300"
    for post in flow.posts:
        assert post["type"] == "message"
        assert [a["contentType"] for a in post["attachments"]] == [CARD_TYPE]
    assert all(h.headers["content-type"] == "application/json" for h in teams.hits)


async def test_a_redelivered_or_replayed_event_does_not_post_again(
    teams: TeamsFake, ctx_for: Any
) -> None:
    flow = teams.flow("Support")
    conn = build(hook(teams, flow), "calls")
    event = parse(fixture("call_completed"))
    await conn.deliver(event, ctx_for("calls", delivery_id=1))
    await conn.deliver(event, ctx_for("calls", delivery_id=1, attempt=2))  # a retry
    await conn.deliver(event, ctx_for("calls", delivery_id=2))  # a replay
    assert len(flow.posts) == 1 and len(teams.hits) == 1


async def test_events_out_of_order_never_post_twice(teams: TeamsFake, ctx_for: Any) -> None:
    flow = teams.flow("Support")
    conn = build(hook(teams, flow), "calls")
    order = ("call_completed", "call_live_completed", "call_live_progress_update")
    for i, name in enumerate(order):
        await conn.deliver(parse(fixture(name)), ctx_for("calls", delivery_id=i))
    await conn.deliver(parse(reencoded("call_completed")), ctx_for("calls", delivery_id=9))
    [card] = flow.cards  # the live events are not in post_on; the record posts once
    assert title(card) == "✅ Outbound call · answered"
    assert len(teams.hits) == 1


async def test_post_on_chooses_the_phases(teams: TeamsFake, ctx_for: Any) -> None:
    flow = teams.flow("Support")
    conn = build(hook(teams, flow, post_on=["call:live:progress"]), "calls")
    for i, name in enumerate((*LIFECYCLE, "call_completed")):
        await conn.deliver(parse(fixture(name)), ctx_for("calls", delivery_id=i))
    assert [title(c) for c in flow.cards] == [
        "📞 Outbound call · ringing",
        "🟢 Outbound call · talking",
    ]


async def test_a_missed_inbound_call_becomes_a_missed_call_card(
    teams: TeamsFake, ctx_for: Any
) -> None:
    flow = teams.flow("Support")
    conn = build(hook(teams, flow), "calls")
    await conn.deliver(parse(fixture("call_completed_missed_inbound")), ctx_for("calls"))
    [card] = flow.cards
    assert (card["type"], card["version"]) == ("AdaptiveCard", "1.4")
    assert title(card) == "❌ Missed call from +33142685300"
    assert facts(card) == {
        "Caller": "+33142685300",
        "Called": "Giulia Rossi (ext. 214) · Tier 1",
        "When": "{{DATE(2025-11-29T11:16:42Z, SHORT)}} {{TIME(2025-11-29T11:16:42Z)}}",
        "Rang for": "0:28",
        "Number dialled": "+442030950000",
    }
    assert card["body"][-1]["text"] == "Wildix call it_w204517_1764415002.91 · ACME head office"


async def test_presence_and_sms_post_once_each(teams: TeamsFake, ctx_for: Any) -> None:
    flow = teams.flow("Support")
    conn = build(hook(teams, flow), "calls")
    for i, name in enumerate(("presence_user", "sms_status", "presence_user")):
        await conn.deliver(parse(fixture(name)), ctx_for("calls", delivery_id=i))
    presence, sms = flow.cards
    assert title(presence) == (
        "**giulia.rossi@example.org** is now **⛔ do not disturb** until "
        "{{DATE(2025-11-29T12:00:00Z, SHORT)}} {{TIME(2025-11-29T12:00:00Z)}}"
    )
    assert presence["body"][1]["text"] == "Training"
    assert title(sms) == "✅ SMS from **+442030950000** to **+447700900123**: **delivered**"


# -- errors ----------------------------------------------------------------------------------


async def test_429_with_retry_after_is_honoured(db_url: str, teams: TeamsFake) -> None:
    flow = teams.flow("Support")
    teams.rate_limit(retry_after=1)
    async with run_relay(make_settings(db_url, {"calls": hook(teams, flow)})) as relay:
        await relay.post(fixture("call_completed_missed_inbound"))
        [delivery] = await relay.settled()
        tries = await relay.attempts(delivery.id)
    assert delivery.state == "succeeded"
    assert [(a.outcome, a.status_code) for a in tries] == [("retry", 429), ("succeeded", 202)]
    assert "TooManyRequests" in tries[0].error
    first, second = teams.hits
    assert first.status == 429 and second.error is None
    assert second.at - first.at >= 0.95  # the schedule says 0.2 s; Teams said 1 s
    assert len(flow.posts) == 1


@pytest.mark.parametrize(
    ("setup", "status", "code"),
    [
        ("deleted", 404, "WorkflowNotFound"),
        ("gone", 410, "WorkflowNotFound"),
        ("bad_card", 400, "InvalidRequestContent"),
    ],
)
async def test_4xx_is_dead_after_one_attempt_with_the_flow_error(
    db_url: str, teams: TeamsFake, setup: str, status: int, code: str, caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    flow = teams.flow("Support")
    flow.deleted = setup == "deleted"
    url = teams.webhook_url(flow)
    if setup in ("gone", "bad_card"):
        teams.fail(status, code)
    block = {"type": "teams", "webhook_url": url}
    async with run_relay(make_settings(db_url, {"calls": block})) as relay:
        await relay.post(fixture("call_completed_missed_inbound"))
        [delivery] = await relay.settled()
        [attempt] = await relay.attempts(delivery.id)
    assert (delivery.state, delivery.attempts, attempt.status_code) == ("dead", 1, status)
    assert delivery.last_error.startswith(f"teams webhook: HTTP {status} ")
    assert code in delivery.last_error
    assert flow.sig not in delivery.last_error and "sig=" not in delivery.last_error
    assert len(teams.hits) == 1 and flow.posts == []
    # relay's own log lines tell the failure, not the URL's secret (httpx's request lines, which
    # do name the URL, are silenced by relay.logs in the service: not configured in this test)
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("relay"))
    assert code in ours
    assert "SiG-wrong-secret" not in ours and flow.sig not in ours


async def test_a_rejected_signature_holds_the_flow_behind_its_circuit_not_dead(
    db_url: str, teams: TeamsFake
) -> None:
    """A 401 is the webhook URL's fault, not the event's: the circuit opens, nothing goes dead,
    and the stored error says the credentials were rejected without showing them."""
    flow = teams.flow("Support")
    url = teams.webhook_url(flow, sig="SiG-wrong-secret")
    block = {
        "type": "teams",
        "webhook_url": url,
        "circuit": {"failures": 1, "cool_down": "1h", "max": "1h"},
    }
    async with run_relay(make_settings(db_url, {"calls": block})) as relay:
        await relay.post(fixture("call_completed_missed_inbound"))
        opened = await relay.wait_until(
            lambda: _open_circuit(relay, "calls"), what="the circuit to open"
        )
        [delivery] = await relay.deliveries()
    assert (delivery.state, delivery.attempts) == ("pending", 0)  # the attempt was refunded
    assert delivery.last_error.startswith("circuit open: teams webhook: HTTP 401 ")
    assert "DirectApiInvalidAuthorizationSignature" in delivery.last_error
    assert "credentials rejected" in delivery.last_error and "credentials rejected" in opened
    for text in (delivery.last_error, opened):
        assert "SiG-wrong-secret" not in text and "sig=" not in text
    assert len(teams.hits) == 1 and flow.posts == []


async def _open_circuit(relay: RunningRelay, name: str) -> str | None:
    """The circuit's reason once it holds the connector's deliveries."""
    circuit = (await relay.store.circuits()).get(name)
    return circuit.reason if circuit is not None and circuit.holds else None


async def test_5xx_is_retried_then_posted_once(teams: TeamsFake, ctx_for: Any) -> None:
    flow = teams.flow("Support")
    teams.fail(502, "BadGateway")
    conn = build(hook(teams, flow), "calls")
    event = parse(fixture("call_completed"))
    ctx = ctx_for("calls")
    with pytest.raises(RetryableError) as info:
        await conn.deliver(event, ctx)
    assert info.value.status_code == 502 == ctx.status_code and "BadGateway" in str(info.value)
    await conn.deliver(event, ctx_for("calls", attempt=2))
    assert [h.status for h in teams.hits] == [502, 202] and len(flow.posts) == 1


async def test_a_card_over_28_kb_is_refused_before_posting(teams: TeamsFake, ctx_for: Any) -> None:
    flow = teams.flow("Support")
    text = "{{ (caller.number * (data.padding or 1)) | tojson }}"
    big = '{"type": "AdaptiveCard", "version": "1.4", "body": [{"type": "TextBlock", "text": %s}]}'
    big %= text
    conn = build(hook(teams, flow, templates={"missed_call": big}), "calls")
    body = json.loads(fixture("call_completed_missed_inbound"))
    body["data"]["padding"] = 3000
    with pytest.raises(PermanentError, match=r"teams template missed_call: is \d+ bytes; Teams"):
        await conn.deliver(parse(json.dumps(body).encode()), ctx_for("calls"))
    assert teams.hits == []


# -- templates -------------------------------------------------------------------------------


async def test_a_template_override_inline_or_by_file_is_used(
    teams: TeamsFake, ctx_for: Any, tmp_path: Path
) -> None:
    flow = teams.flow("Support")
    card = '{"type": "AdaptiveCard", "version": "1.5", "body": [{"type": "TextBlock", "text": %s}]}'
    path = tmp_path / "missed.json.j2"
    path.write_text(card % '{{ ("Call back " ~ caller.number) | tojson }}')
    presence = card % '{{ (presence.email ~ " → " ~ presence.status) | tojson }}'
    templates = {"missed_call": {"file": str(path)}, "presence": presence}
    conn = build(hook(teams, flow, templates=templates), "calls")
    for i, name in enumerate(("call_completed_missed_inbound", "presence_user")):
        await conn.deliver(parse(fixture(name)), ctx_for("calls", delivery_id=i))
    assert [c["body"] for c in flow.cards] == [
        [{"type": "TextBlock", "text": "Call back +33142685300"}],
        [{"type": "TextBlock", "text": "giulia.rossi@example.org → dnd"}],
    ]


# -- what strangers write: inert in every field ----------------------------------------------


async def test_a_hostile_caller_name_reaches_teams_inert_in_every_field(
    db_url: str, teams: TeamsFake
) -> None:
    flow = teams.flow("Support")
    name = (
        HOSTILE_NAME
        + " <at>Everyone</at> [Call me](https://evil.example) www.evil.example"
        + " {{DATE(2017-02-14T06:08:00Z)}} _x_ - 1."
    )
    async with run_relay(make_settings(db_url, {"calls": hook(teams, flow)})) as relay:
        assert (await relay.post(hostile_event(name))).status_code == 200
        [row] = await relay.settled()
    assert row.state == "succeeded"
    [card] = flow.cards
    assert_inert(card, {"https://rec.example/good.wav"})
    assert links(card) == ["https://rec.example/good.wav"]
    caller = facts(card)["Caller"]
    assert "Click to call back" in caller and "Call me" in caller  # shown as typed, not a link
    assert caller.replace("\u2060", "").startswith("<!channel> @here <https://evil.example|")


@pytest.mark.parametrize(
    ("allow_http", "linked"),
    [
        (False, ["https://rec.example/good.wav"]),
        (True, ["http://rec.example/plain.wav", "https://rec.example/good.wav"]),
    ],
)
async def test_only_https_recordings_become_links_unless_http_is_allowed(
    teams: TeamsFake, ctx_for: Any, allow_http: bool, linked: list[str]
) -> None:
    flow = teams.flow("Support")
    opt_in = {"allow_http_links": True} if allow_http else {}  # the default refuses http
    conn = build(hook(teams, flow, **opt_in), "calls")
    await conn.deliver(parse(hostile_event("Jane Doe")), ctx_for("calls"))
    [card] = flow.cards
    recording = card["body"][2]["text"]
    assert links(card) == linked
    assert "script.wav" in recording and "javascript" not in recording  # the name, no link
    assert "plain.wav" in recording


async def test_presence_and_sms_text_typed_by_users_is_inert_in_teams(
    teams: TeamsFake, ctx_for: Any
) -> None:
    flow = teams.flow("Support")
    conn = build(hook(teams, flow), "calls")
    presence = json.loads(fixture("presence_user"))
    sms = json.loads(fixture("sms_status"))
    for data in (presence["data"], sms["data"]):
        for key, value in data.items():
            if isinstance(value, str) and key not in ("type", "id"):
                data[key] = HOSTILE_NAME + " [x](https://evil.example)"
    for i, body in enumerate((presence, sms)):
        await conn.deliver(parse(json.dumps(body).encode()), ctx_for("calls", delivery_id=i))
    assert len(flow.cards) == 2
    for card in flow.cards:
        assert_inert(card, set())


def test_the_inertness_check_catches_what_teams_would_parse() -> None:
    """``assert_inert`` above is what the hostile tests stand on: it fails on a raw name."""
    for raw in (
        "[Call me](https://evil.example)",
        "<at>Everyone</at>",
        "see www.evil.example",
        "@channel",
        "{{DATE(2017-02-14T06:08:00Z)}}",
        "*bold*",
        "[x]: https://evil.example",
    ):
        with pytest.raises(AssertionError):
            assert_inert({"body": [{"type": "TextBlock", "text": raw}]}, set())


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("Jane Doe", "Jane Doe"),
        ("[x](https://e.example)", "[x]\u2060(https:\u2060//e.example)"),
        ("<at>All</at>", "<\u2060at>All<\u2060/at>"),
        ("a\nb", "a b"),
        ("- 1. item", "\u2060- 1. item"),
        ("12) x", "\u206012) x"),
        ("**b** _i_ snake_case", "\u2217\u2217b\u2217\u2217 \u02cdi\u02cd snake_case"),
        ("WWW.evil.example", "WWW\u2060.evil.example"),
    ],
)
def test_teams_text_shows_what_was_typed_and_parses_nothing(value: str, shown: str) -> None:
    assert teams_text(value) == shown
    assert teams_text(value).replace("\u2060", "") == shown.replace("\u2060", "")
