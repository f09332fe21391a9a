"""The ``slack`` connector against a loopback Slack (tests/fakes/slack.py).

The full-path tests post signed Wildix bodies to a running relay and assert on what the Slack
channel finally shows; the focused ones drive ``deliver()`` with a real context and store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay import (
    AuthError,
    PermanentError,
    RetryableError,
)
from relay.connector import ConnectorContext, Limiters
from relay.store.records import Store
from relay.wildix import parse
from tests.fakes.slack import Message, SlackFake
from tests.support.connectors import build
from tests.support.hostile import HOSTILE_NAME, assert_inert, hostile_event, links
from tests.support.relay import make_settings, run_relay
from tests.support.samples import fixture

pytest_plugins = ("tests.test_connectors_builtin",)  # its store, http and ctx_for fixtures

LIFECYCLE = ("call_live_progress_start", "call_live_progress_update", "call_live_completed")


def bot(slack: SlackFake, channel: str = "#support", **extra: Any) -> dict[str, Any]:
    block = {"type": "slack", "token": slack.token, "channel": channel}
    return {**block, "base_url": slack.api_url, **extra}


def header(version: dict[str, Any]) -> str:
    return str(version["blocks"][0]["text"]["text"])


def shown(message: Message) -> str:
    """Everything a reader sees on the card, as one string."""
    return json.dumps(message.versions[-1], ensure_ascii=False)


def reencoded(name: str) -> bytes:
    """The same event as other bytes: a duplicate that ingest cannot recognise by its hash."""
    return json.dumps(json.loads(fixture(name)), indent=1).encode()


@pytest.fixture
async def slack() -> Any:
    async with SlackFake() as fake:
        yield fake


# -- bot mode: one card per call, edited as the call moves on --------------------------------


async def test_bot_mode_start_update_end_is_one_post_and_two_edits_in_order(
    db_url: str, slack: SlackFake
) -> None:
    slack.channel("support")
    async with run_relay(make_settings(db_url, {"team": bot(slack)})) as relay:
        for name in LIFECYCLE:  # as the call goes: each once the one before was shown
            assert (await relay.post(fixture(name))).status_code == 200
            rows = await relay.settled()
        assert [r.state for r in rows] == ["succeeded"] * 3

    [card] = slack.messages("support")
    assert [h.endpoint for h in slack.hits] == ["chat.postMessage", "chat.update", "chat.update"]
    assert [header(v) for v in card.versions] == [
        "📞 Outbound call · ringing",
        "🟢 Outbound call · talking",
        "☎️ Outbound call · ended",
    ]
    # the minimal call:live:completed body names nobody: the card keeps what it knew
    assert "Giulia Rossi (ext. 214)" in shown(card) and "+442071838750" in shown(card)
    assert "2025.11.29-10.30.14-214-+442071838750[pbx]-9c01a-0.wav" in shown(card)
    assert all(h.headers["authorization"] == f"Bearer {slack.token}" for h in slack.hits)
    update = slack.calls("chat.update")[0].body
    assert (update["channel"], update["ts"]) == (card.channel, card.ts)  # the ID, not "#support"


async def test_the_final_record_edits_the_same_card_and_a_redelivery_changes_nothing(
    db_url: str, slack: SlackFake
) -> None:
    slack.channel("support")
    async with run_relay(make_settings(db_url, {"team": bot(slack)})) as relay:
        for name in (*LIFECYCLE, "call_completed"):  # each once the one before was shown
            await relay.post(fixture(name))
            await relay.settled()
        await relay.post(reencoded("call_completed"))  # passes ingest: a new event, same call
        await relay.settled()
        await relay.post(reencoded("call_live_progress_start"))
        rows = await relay.settled()
        assert len(rows) == 6 and {r.state for r in rows} == {"succeeded"}

    [card] = slack.messages("support")
    assert card.edits == 3
    assert header(card.versions[-1]) == "✅ Outbound call · answered"
    assert "3:01" in shown(card) and "talked 2:56" in shown(card)
    assert len(slack.calls("chat.postMessage")) == 1 and len(slack.calls("chat.update")) == 3


async def test_bot_mode_coalesces_a_backlog_and_webhook_mode_does_not(
    db_url: str, slack: SlackFake
) -> None:
    """Queued while the dispatcher was down: the bot's card is posted once, from the final
    record (the live events are superseded); a webhook still posts for every event it posts on."""
    slack.channel("support")
    url = slack.webhook(slack.channel("alerts"))
    hook = {"type": "slack", "webhook_url": url, "post_on": ["call:live:progress"]}
    settings = make_settings(db_url, {"team": bot(slack), "hook": hook})
    async with run_relay(settings, dispatch=False) as relay:
        for name in (*LIFECYCLE, "call_completed"):
            await relay.post(fixture(name))
    async with run_relay(settings) as relay:
        rows = await relay.settled()
    team = sorted(r.state for r in rows if r.connector == "team")
    assert team == ["succeeded"] + ["superseded"] * 3
    assert {r.state for r in rows if r.connector == "hook"} == {"succeeded"}
    [card] = slack.messages("support")
    assert card.edits == 0 and header(card.versions[-1]) == "✅ Outbound call · answered"
    assert len(slack.calls("chat.postMessage")) == 1 and slack.calls("chat.update") == []
    first, second = slack.messages("alerts")  # the webhook: both live updates, in order
    assert "ringing" in first.text and "talking" in second.text


async def test_a_redelivered_event_does_not_post_or_edit_again(
    slack: SlackFake, ctx_for: Any
) -> None:
    slack.channel("support")
    conn = build(bot(slack), "team")
    event = parse(fixture("call_live_progress_update"))
    await conn.deliver(event, ctx_for("team", delivery_id=1))
    await conn.deliver(event, ctx_for("team", delivery_id=1, attempt=2))  # a retry
    await conn.deliver(event, ctx_for("team", delivery_id=2))  # a replay
    [card] = slack.messages("support")
    assert card.edits == 0
    assert [h.endpoint for h in slack.hits] == ["chat.postMessage"]


async def test_events_arriving_out_of_order_never_post_twice_or_go_backwards(
    slack: SlackFake, ctx_for: Any
) -> None:
    slack.channel("support")
    conn = build(bot(slack), "team")
    for i, name in enumerate(
        ("call_completed", "call_live_progress_update", "call_live_completed")
    ):
        await conn.deliver(parse(fixture(name)), ctx_for("team", delivery_id=i))
    [card] = slack.messages("support")
    # older events only fill gaps (the live update knew of a recording); the state never goes back
    assert [header(v) for v in card.versions] == ["✅ Outbound call · answered"] * 2
    assert "9c01a-0.wav" not in json.dumps(card.versions[0]) and "9c01a-0.wav" in shown(card)
    assert len(slack.calls("chat.postMessage")) == 1


async def test_a_missed_inbound_call_becomes_a_missed_call_card(
    slack: SlackFake, ctx_for: Any
) -> None:
    slack.channel("support")
    conn = build(bot(slack), "team")
    await conn.deliver(parse(fixture("call_completed_missed_inbound")), ctx_for("team"))
    [card] = slack.messages("support")
    assert card.text == "Missed call from +33142685300 for Giulia Rossi (ext. 214)"
    assert header(card.versions[0]) == "❌ Missed call from +33142685300"
    fields = [f["text"] for f in card.blocks[1]["fields"]]
    assert "*Called*\nGiulia Rossi (ext. 214)\nTier 1" in fields
    assert "*Number dialled*\n+442030950000" in fields
    assert "*Rang for*\n0:28" in fields
    assert any(f.startswith("*When*\n<!date^1764415002^") for f in fields)


async def test_a_card_deleted_in_slack_is_posted_again(slack: SlackFake, ctx_for: Any) -> None:
    slack.channel("support")
    conn = build(bot(slack), "team")
    await conn.deliver(parse(fixture("call_live_progress_start")), ctx_for("team", delivery_id=1))
    slack.delete(slack.messages("support")[0])
    await conn.deliver(parse(fixture("call_live_progress_update")), ctx_for("team", delivery_id=2))
    await conn.deliver(parse(fixture("call_live_completed")), ctx_for("team", delivery_id=3))
    [card] = slack.messages("support")
    assert [header(v) for v in card.versions] == [
        "🟢 Outbound call · talking",
        "☎️ Outbound call · ended",
    ]
    assert [(h.endpoint, h.error) for h in slack.hits] == [
        ("chat.postMessage", None),
        ("chat.update", "message_not_found"),
        ("chat.postMessage", None),
        ("chat.update", None),
    ]


async def test_presence_and_sms_post_once_each(slack: SlackFake, ctx_for: Any) -> None:
    slack.channel("support")
    conn = build(bot(slack), "team")
    for i, name in enumerate(("presence_user", "sms_status", "presence_user")):
        await conn.deliver(parse(fixture(name)), ctx_for("team", delivery_id=i))
    presence, sms = slack.messages("support")
    assert presence.text == "giulia.rossi@example.org is now ⛔ do not disturb"
    assert ">Training" in shown(presence)
    assert sms.text == "SMS to +447700900123: delivered"


# -- webhook mode: one message per call ------------------------------------------------------


async def test_webhook_mode_posts_once_per_call_on_the_final_record(
    db_url: str, slack: SlackFake
) -> None:
    url = slack.webhook(slack.channel("alerts"))
    block = {"type": "slack", "webhook_url": url}
    async with run_relay(make_settings(db_url, {"alerts": block})) as relay:
        for name in (*LIFECYCLE, "call_completed", "call_completed_missed_inbound"):
            await relay.post(fixture(name))
        await relay.settled()
        await relay.post(reencoded("call_completed"))
        rows = await relay.settled()
        assert len(rows) == 6 and {r.state for r in rows} == {"succeeded"}

    missed, summary = sorted(slack.messages("alerts"), key=lambda m: m.text)  # two calls
    assert summary.text == "✅ Outbound call answered: Giulia Rossi (ext. 214) → +442071838750"
    assert missed.text.startswith("Missed call from +33142685300")
    assert [(h.endpoint, h.status) for h in slack.hits] == [("webhook", 200)] * 2


async def test_webhook_mode_post_on_chooses_the_phase(slack: SlackFake, ctx_for: Any) -> None:
    url = slack.webhook(slack.channel("alerts"))
    conn = build({"type": "slack", "webhook_url": url, "post_on": ["call:live:progress"]})
    for i, name in enumerate((*LIFECYCLE, "call_completed")):
        await conn.deliver(parse(fixture(name)), ctx_for("team", delivery_id=i))
    first, second = slack.messages("alerts")  # one per phase: start, then update
    assert "ringing" in first.text and "talking" in second.text


# -- errors ----------------------------------------------------------------------------------


async def test_429_with_retry_after_is_honoured(db_url: str, slack: SlackFake) -> None:
    slack.channel("support")
    slack.rate_limit("chat.postMessage", retry_after=1)
    async with run_relay(make_settings(db_url, {"team": bot(slack)})) as relay:
        await relay.post(fixture("call_completed_missed_inbound"))
        [delivery] = await relay.settled()
        tries = await relay.attempts(delivery.id)
    assert delivery.state == "succeeded"
    assert [(a.outcome, a.status_code) for a in tries] == [("retry", 429), ("succeeded", 200)]
    assert "ratelimited" in tries[0].error
    first, second = slack.hits
    assert first.status == 429 and second.error is None
    assert second.at - first.at >= 0.95  # the schedule says 0.2 s; Slack said 1 s
    assert len(slack.messages("support")) == 1


async def test_channel_not_found_is_dead_after_one_attempt(db_url: str, slack: SlackFake) -> None:
    async with run_relay(make_settings(db_url, {"team": bot(slack, "#gone")})) as relay:
        await relay.post(fixture("call_completed_missed_inbound"))
        [delivery] = await relay.settled()
    assert (delivery.state, delivery.attempts) == ("dead", 1)
    assert delivery.last_error == "slack chat.postMessage: channel_not_found"
    assert len(slack.hits) == 1


@pytest.mark.parametrize(
    ("setup", "status", "error"),
    [
        ("deleted", 404, "channel_not_found"),
        ("archived", 410, "channel_is_archived"),
        ("unknown_hook", 404, "no_service"),
        ("bad_payload", 400, "invalid_payload"),
    ],
)
async def test_webhook_errors_are_permanent_with_the_slack_error(
    slack: SlackFake, ctx_for: Any, setup: str, status: int, error: str
) -> None:
    chan = slack.channel("alerts", archived=setup == "archived")
    chan.deleted = setup == "deleted"
    url = slack.webhook(chan)
    if setup == "unknown_hook":
        url = url[:-4] + "0000"
    if setup == "bad_payload":
        slack.fail("webhook", "invalid_payload", status=400)
    conn = build({"type": "slack", "webhook_url": url})
    ctx = ctx_for("team")
    with pytest.raises(PermanentError) as info:
        await conn.deliver(parse(fixture("call_completed")), ctx)
    assert info.value.status_code == status == ctx.status_code
    assert error in str(info.value)
    assert "whsecret" not in str(info.value)  # the webhook URL is the secret
    assert await ctx.links.get("posted:q7m2xk:it_w204517_1764412210.77:record") is None


@pytest.mark.parametrize(
    ("setup", "error", "expected"),
    [
        ("token", "invalid_auth", AuthError),
        ("archived", "is_archived", PermanentError),
        ("fault", "internal_error", RetryableError),
        ("fault", "msg_too_long", PermanentError),
    ],
)
async def test_web_api_errors_follow_the_outcome_contract(
    slack: SlackFake, ctx_for: Any, setup: str, error: str, expected: type[Exception]
) -> None:
    slack.channel("support", archived=setup == "archived")
    if setup == "fault":
        slack.fail("chat.postMessage", error)
    block = bot(slack, token="xoxb-wrong") if setup == "token" else bot(slack)
    with pytest.raises(expected) as info:
        await build(block, "team").deliver(parse(fixture("call_completed")), ctx_for("team"))
    assert isinstance(info.value, expected)
    assert expected is not PermanentError or not isinstance(info.value, AuthError)
    assert expected is not RetryableError or not isinstance(info.value, AuthError)
    assert str(info.value).startswith(f"slack chat.postMessage: {error}")
    if expected is AuthError:  # what to fix, for the circuit's reason and the incident
        assert "rejected the bot token of connector 'team'" in str(info.value)
        assert "`token` in config.yaml" in str(info.value)
    else:
        assert str(info.value) == f"slack chat.postMessage: {error}"
    assert "xoxb" not in str(info.value)


async def test_rollup_error_and_429_on_the_webhook_are_retried(
    slack: SlackFake, ctx_for: Any
) -> None:
    url = slack.webhook(slack.channel("alerts"))
    slack.fail("webhook", "rollup_error", status=500)
    slack.rate_limit("webhook", retry_after=30)
    conn = build({"type": "slack", "webhook_url": url})
    event = parse(fixture("call_completed"))
    with pytest.raises(RetryableError) as first:
        await conn.deliver(event, ctx_for("team"))
    with pytest.raises(RetryableError) as second:
        await conn.deliver(event, ctx_for("team", attempt=2))
    await conn.deliver(event, ctx_for("team", attempt=3))
    assert "rollup_error" in str(first.value) and first.value.status_code == 500
    assert second.value.retry_after == 30
    assert len(slack.messages("alerts")) == 1


async def test_check_calls_auth_test_in_bot_mode_only(
    slack: SlackFake, store: Store, http: httpx.AsyncClient
) -> None:
    ctx = ConnectorContext(name="team", http=http, store=store, limiters=Limiters())
    await build(bot(slack), "team").check(ctx)
    with pytest.raises(AuthError, match="invalid_auth"):
        await build(bot(slack, token="xoxb-revoked"), "team").check(ctx)
    url = slack.webhook(slack.channel("alerts"))
    await build({"type": "slack", "webhook_url": url}).check(ctx)
    assert [(h.endpoint, h.error) for h in slack.hits] == [
        ("auth.test", None),
        ("auth.test", "invalid_auth"),
    ]


async def test_a_template_override_inline_or_by_file_is_used(
    slack: SlackFake, ctx_for: Any, tmp_path: Path
) -> None:
    url = slack.webhook(slack.channel("alerts"))
    path = tmp_path / "missed.json.j2"
    path.write_text('{"text": {{ ("Call back " ~ caller.number) | tojson }}}')
    presence = '{"text": {{ (presence.email ~ " → " ~ presence.status) | tojson }}}'
    templates = {"missed_call": {"file": str(path)}, "presence": presence}
    conn = build({"type": "slack", "webhook_url": url, "templates": templates})
    for i, name in enumerate(("call_completed_missed_inbound", "presence_user")):
        await conn.deliver(parse(fixture(name)), ctx_for("team", delivery_id=i))
    assert [m.versions[0] for m in slack.messages("alerts")] == [
        {"text": "Call back +33142685300", "blocks": None},
        {"text": "giulia.rossi@example.org → dnd", "blocks": None},
    ]


# -- what strangers write: inert in every field (docs/connectors.md, Slack: what callers write)


async def test_a_hostile_caller_name_reaches_slack_inert_in_every_field(
    db_url: str, slack: SlackFake
) -> None:
    slack.channel("support")
    hook = {"type": "slack", "webhook_url": slack.webhook(slack.channel("alerts"))}
    connectors = {"team": bot(slack), "alerts": hook}
    async with run_relay(make_settings(db_url, connectors)) as relay:
        assert (await relay.post(hostile_event())).status_code == 200
        rows = await relay.settled()
    assert sorted(r.state for r in rows) == ["succeeded", "succeeded"]

    [posted] = slack.calls("chat.postMessage")
    [hooked] = slack.calls("webhook")
    for body in (posted.body, json.loads(hooked.body)):
        assert_inert(body, {"https://rec.example/good.wav"})
        caller = body["blocks"][1]["fields"][0]["text"]
        assert caller.startswith("*Caller*\n&lt;!channel&gt; @\u2060here &lt;https:")
        assert "Click to call back&gt;" in caller  # shown as typed, not a link
        assert links(json.dumps(body, ensure_ascii=False)) == ["https://rec.example/good.wav"]


@pytest.mark.parametrize(
    ("allow_http", "linked"),
    [
        (False, ["https://rec.example/good.wav"]),
        (True, ["http://rec.example/plain.wav", "https://rec.example/good.wav"]),
    ],
)
async def test_only_https_recordings_become_slack_links_unless_http_is_allowed(
    slack: SlackFake, ctx_for: Any, allow_http: bool, linked: list[str]
) -> None:
    slack.channel("support")
    opt_in = {"allow_http_links": True} if allow_http else {}  # the default refuses http
    conn = build(bot(slack, **opt_in), "team")
    await conn.deliver(parse(hostile_event("Jane Doe")), ctx_for("team"))
    [posted] = slack.calls("chat.postMessage")
    recording = posted.body["blocks"][2]["text"]["text"]
    assert links(recording) == linked
    assert "script.wav" in recording and "javascript" not in recording  # the name, no link
    assert "plain.wav" in recording


async def test_presence_and_sms_text_typed_by_users_is_inert_in_slack(
    slack: SlackFake, ctx_for: Any
) -> None:
    slack.channel("support")
    conn = build(bot(slack), "team")
    presence = json.loads(fixture("presence_user"))
    sms = json.loads(fixture("sms_status"))
    presence_data, sms_data = presence["data"], sms["data"]
    for data in (presence_data, sms_data):
        for key, value in data.items():
            if isinstance(value, str) and key not in ("type", "id"):
                data[key] = HOSTILE_NAME
    for i, body in enumerate((presence, sms)):
        await conn.deliver(parse(json.dumps(body).encode()), ctx_for("team", delivery_id=i))
    for hit in slack.calls("chat.postMessage"):
        assert_inert(hit.body, set())


async def test_a_card_edited_to_a_hostile_name_is_inert_too(slack: SlackFake, ctx_for: Any) -> None:
    slack.channel("support")
    conn = build(bot(slack), "team")
    await conn.deliver(parse(hostile_event("Jane Doe")), ctx_for("team", delivery_id=1))
    await conn.deliver(parse(hostile_event()), ctx_for("team", delivery_id=2))
    [update] = slack.calls("chat.update")
    assert "&lt;!channel&gt;" in update.body["text"]
    assert_inert(update.body, {"https://rec.example/good.wav"})
