"""What a stranger writes into an event never pings, links or formats anything people read.

A caller chooses their own caller-ID name, and a recording URL is whatever the event says. These
tests post such an event, signed, to a running relay and assert on the exact bytes the loopback
Slack (tests/fakes/slack.py) and SMTP server (aiosmtpd, tests/fakes/smtp.py) received.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from relay.messages import safe_url, template_values
from relay.wildix import parse
from tests.fakes.slack import SlackFake
from tests.fakes.smtp import SmtpFake
from tests.support.connectors import build
from tests.support.relay import make_settings, run_relay
from tests.support.samples import fixture

pytest_plugins = ("tests.test_connectors_builtin",)  # its store, http and ctx_for fixtures

HOSTILE_NAME = "<!channel> @here <https://evil.example|Click to call back> *bold*"
RECORDINGS = {
    "script.wav": "javascript:alert(1)",
    "plain.wav": "http://rec.example/plain.wav",
    "good.wav": "https://rec.example/good.wav",
}
# `<` opening a Slack mention (<!…>, <@…>, <#…>) or link (<scheme:…>): Slack parses these.
CONTROL = re.compile(r"<(?=[!@#]|[A-Za-z][A-Za-z0-9+.-]*:)")
OURS = re.compile(r"<!date\^\d+\^\{date_short_pretty\} \{time\}\|[^<>]*>")  # slack_date's own
TYPED_MENTION = re.compile(r"@(channel|here|everyone)\b", re.IGNORECASE)
BARE_LINK = re.compile(r"https?://evil|javascript:", re.IGNORECASE)


def hostile_event(name: str = HOSTILE_NAME) -> bytes:
    """The missed-call sample, its caller renamed and with a voicemail under three URLs."""
    body = json.loads(fixture("call_completed_missed_inbound"))
    flow = body["data"]["flows"][0]
    flow["caller"]["name"] = name
    flow["recordingsData"] = [{"fileName": f, "url": u} for f, u in RECORDINGS.items()]
    return json.dumps(body).encode()


def strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value: what Slack may parse."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def text_objects(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        if value.get("type") in ("mrkdwn", "plain_text") and "text" in value:
            yield value
        for item in value.values():
            yield from text_objects(item)
    elif isinstance(value, list):
        for item in value:
            yield from text_objects(item)


def links(text: str) -> list[str]:
    """The targets of the ``<url|label>`` links Slack would make of a string."""
    return re.findall(r"<([A-Za-z][A-Za-z0-9+.-]*:[^|>]*)(?:\|[^>]*)?>", OURS.sub("", text))


def assert_inert(message: dict[str, Any], allowed_links: set[str]) -> None:
    """No field holds a mention, a typed @channel, a bare evil link, or a link not allowed."""
    for text in strings(message):
        for match in CONTROL.finditer(OURS.sub("", text)):
            target = text[match.start() + 1 :].split("|")[0].split(">")[0]
            assert target in allowed_links, f"a parsed <…> in {text!r}"
        assert not TYPED_MENTION.search(text), text
        assert not BARE_LINK.search(text), text
    mrkdwn = [o for o in text_objects(message) if o["type"] == "mrkdwn"]
    for obj in mrkdwn:
        assert obj.get("verbatim") is True, obj
    for text in [message["text"], *(o["text"] for o in mrkdwn)]:
        assert "*bold*" not in text, text  # a name cannot restyle the card


@pytest.fixture
async def slack() -> Any:
    async with SlackFake() as fake:
        yield fake


@pytest.fixture
async def smtp() -> Any:
    async with SmtpFake() as server:
        yield server


def bot(slack: SlackFake, **extra: Any) -> dict[str, Any]:
    block = {"type": "slack", "token": slack.token, "channel": "#support"}
    return {**block, "base_url": slack.api_url, **extra}


def mail(smtp: SmtpFake, **extra: Any) -> dict[str, Any]:
    return {
        "type": "email",
        "host": "127.0.0.1",
        "port": smtp.port,
        "security": "none",
        "from": "relay@acme.example",
        "to": ["ops@acme.example"],
        "timeout": 5,
        **extra,
    }


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


async def test_hostile_values_and_urls_never_become_markup_or_hrefs_in_email(
    db_url: str, smtp: SmtpFake
) -> None:
    async with run_relay(make_settings(db_url, {"mail": mail(smtp)})) as relay:
        assert (await relay.post(hostile_event())).status_code == 200
        [row] = await relay.settled()
    assert row.state == "succeeded"
    [got] = smtp.accepted
    html = got.message.get_body(("html",)).get_content()
    assert re.findall(r'href="([^"]*)"', html) == [
        "https://rec.example/good.wav",
        "tel:+33142685300",
    ]
    assert "&lt;!channel&gt; @here &lt;https://evil.example|Click to call back&gt;" in html
    assert "<https://evil" not in html and "javascript:" not in html
    text = got.message.get_body(("plain",)).get_content()
    assert "javascript:" not in text and "http://rec.example" not in text
    assert "https://rec.example/good.wav" in text


async def test_an_operator_may_allow_http_recording_links_in_email(
    smtp: SmtpFake, ctx_for: Any
) -> None:
    conn = build(mail(smtp, allow_http_links=True), "mail")
    await conn.deliver(parse(hostile_event("Jane Doe")), ctx_for("mail"))
    [got] = smtp.accepted
    html = got.message.get_body(("html",)).get_content()
    hrefs = re.findall(r'href="([^"]*)"', html)
    assert hrefs[:2] == ["http://rec.example/plain.wav", "https://rec.example/good.wav"]
    assert "javascript:" not in html


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


async def test_an_admins_html_template_is_autoescaped_too(smtp: SmtpFake, ctx_for: Any) -> None:
    links = '{% for r in call.recordings %}<a href="{{ r.url }}">x</a>{% endfor %}'
    html = "<p>{{ caller | party }}</p>" + links
    conn = build(mail(smtp, templates={"missed_call": {"html": html}}), "mail")
    await conn.deliver(parse(hostile_event('"><script>alert(1)</script>')), ctx_for("mail"))
    [got] = smtp.accepted
    body = got.message.get_body(("html",)).get_content()
    assert "<script>" not in body and "&lt;script&gt;" in body
    hrefs = re.findall(r'href="([^"]*)"', body)
    assert hrefs[-1] == "https://rec.example/good.wav"
    assert not any(h.startswith(("javascript", "http:")) for h in hrefs), hrefs


def test_every_recording_url_a_template_sees_is_safe_legs_included() -> None:
    call = template_values(parse(hostile_event()))["call"]
    legs = [r["url"] for leg in call["legs"] for r in leg["recordings"]]
    expected = [None, None, "https://rec.example/good.wav"]
    assert [r["url"] for r in call["recordings"]] == expected and legs == expected


@pytest.mark.parametrize(
    ("url", "strict", "with_http"),
    [
        ("https://rec.example/a.wav?x=1&y=2", True, True),
        ("HTTPS://REC.EXAMPLE/a.wav", True, True),
        ("http://rec.example/a.wav", False, True),
        ("javascript:alert(1)", False, False),
        ("JavaScript://rec.example/%0aalert(1)", False, False),
        ("data:text/html,<script>alert(1)</script>", False, False),
        ("vbscript:msgbox(1)", False, False),
        ("//rec.example/a.wav", False, False),
        ("/recordings/a.wav", False, False),
        ("https:///a.wav", False, False),
        ("https://rec.example/a b.wav", False, False),
        ("https://rec.example/\na.wav", False, False),
        ("https://[::1/a.wav", False, False),
        ("", False, False),
    ],
)
def test_safe_url_allows_https_and_opted_in_http_only(
    url: str, strict: bool, with_http: bool
) -> None:
    assert (safe_url(url) == url) is strict and (safe_url(url) is None) is not strict
    assert (safe_url(url, allow_http=True) == url) is with_http
