"""The ``email`` connector against a real SMTP server (aiosmtpd on loopback, tests/fakes/smtp.py).

What is asserted is what the server received: envelope, headers, the rendered parts, and how
often it was offered the message.
"""

from __future__ import annotations

import hashlib
import json
import re
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from relay import AuthError, PermanentError, RetryableError
from relay.connector import ConnectorContext, Limiters
from relay.store.records import Store
from relay.wildix import parse
from tests.fakes.smtp import SmtpFake
from tests.support.connectors import build, check_config, config_error
from tests.support.hostile import hostile_event
from tests.support.relay import make_settings, run_relay
from tests.support.samples import fixture

pytest_plugins = ("tests.test_connectors_builtin",)  # its store, http and ctx_for fixtures

MISSED = "call_completed_missed_inbound"
MISSED_CALL_ID = "it_w204517_1764415002.91"
USERS = {"relay@acme.example": "app-password-7f3k"}


def mail(smtp: SmtpFake, **extra: Any) -> dict[str, Any]:
    return {
        "type": "email",
        "host": "127.0.0.1",
        "port": smtp.port,
        "security": "none",
        "from": "Relay <relay@acme.example>",
        "to": ["ops@acme.example", "Lead <lead@acme.example>"],
        "timeout": 5,
        **extra,
    }


def expected_message_id(integration: str, call: str, phase: str, connector: str) -> str:
    """The documented derivation: SHA-256 of integration:call:phase|connector."""
    digest = hashlib.sha256(f"{integration}:{call}:{phase}|{connector}".encode()).hexdigest()
    return f"<{digest[:40]}@acme.example>"


@pytest.fixture
async def smtp() -> Any:
    async with SmtpFake() as server:
        yield server


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


# -- the full path: a signed Wildix body in, a message in the SMTP box ----------------------


async def test_a_missed_call_alert_arrives_rendered_with_its_message_id(
    db_url: str, smtp: SmtpFake
) -> None:
    async with run_relay(make_settings(db_url, {"mail": mail(smtp)})) as relay:
        assert (await relay.post(fixture(MISSED))).status_code == 200
        await relay.settled()
        # the same event again as other bytes (ingest cannot tell): no second message
        await relay.post(json.dumps(json.loads(fixture(MISSED)), indent=1).encode())
        rows = await relay.settled()
    assert [(r.state, r.attempts) for r in rows] == [("succeeded", 1)] * 2

    [got] = smtp.accepted
    assert len(smtp.offered) == 1
    assert got.mail_from == "relay@acme.example"
    assert got.rcpt_tos == ["ops@acme.example", "lead@acme.example"]
    msg = got.message
    assert msg["Subject"] == "Missed call from +33142685300 for Giulia Rossi (ext. 214)"
    assert msg["From"] == "Relay <relay@acme.example>"
    assert msg["To"] == "ops@acme.example, Lead <lead@acme.example>"
    assert msg["Message-ID"] == expected_message_id("q7m2xk", MISSED_CALL_ID, "record", "mail")
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Wildix-Call-Id"] == MISSED_CALL_ID
    text = msg.get_body(("plain",)).get_content()
    for line in (
        "Caller:          +33142685300",
        "Called:          Giulia Rossi (ext. 214) · Tier 1",
        "Number dialled:  +442030950000",
        "When:            2025-11-29 11:16 UTC",
        "Rang for:        0:28",
        "Call back: +33142685300",
        f"Wildix call {MISSED_CALL_ID} · Test",
    ):
        assert line in text.splitlines(), line
    html = msg.get_body(("html",)).get_content()
    assert '<a href="tel:+33142685300">Call back +33142685300</a>' in html


async def test_a_451_is_retried_then_accepted_with_the_same_message_id(
    db_url: str, smtp: SmtpFake
) -> None:
    smtp.reply_to_data("451 4.3.0 Try again later")
    async with run_relay(make_settings(db_url, {"mail": mail(smtp)})) as relay:
        await relay.post(fixture(MISSED))
        [delivery] = await relay.settled()
        tries = await relay.attempts(delivery.id)
    assert delivery.state == "succeeded"
    assert [(a.outcome, a.status_code) for a in tries] == [("retry", 451), ("succeeded", 250)]
    assert tries[0].error == "smtp: 451 4.3.0 Try again later"
    first, second = smtp.offered
    assert smtp.accepted == [second]
    assert first.message["Message-ID"] == second.message["Message-ID"]


async def test_a_550_is_dead_after_one_attempt_with_the_server_reply(
    db_url: str, smtp: SmtpFake
) -> None:
    smtp.reply_to_data("550 5.7.1 Message rejected as spam", times=5)
    async with run_relay(make_settings(db_url, {"mail": mail(smtp)})) as relay:
        await relay.post(fixture(MISSED))
        [delivery] = await relay.settled()
    assert (delivery.state, delivery.attempts) == ("dead", 1)
    assert delivery.last_error == "smtp: 550 5.7.1 Message rejected as spam"
    assert len(smtp.offered) == 1 and smtp.accepted == []


# -- authentication and TLS -------------------------------------------------------------------


async def test_auth_login_with_the_configured_credentials(ctx_for: Any) -> None:
    async with SmtpFake(users=USERS, mechanisms=("LOGIN",)) as smtp:
        block = mail(smtp, username="relay@acme.example", password=USERS["relay@acme.example"])
        await build(block, "mail").deliver(parse(fixture(MISSED)), ctx_for("mail"))
    assert smtp.logins == [("LOGIN", "relay@acme.example", True)]
    assert len(smtp.accepted) == 1


async def test_a_wrong_password_is_an_auth_error_that_says_what_to_fix(ctx_for: Any) -> None:
    async with SmtpFake(users=USERS, mechanisms=("LOGIN",)) as smtp:
        block = mail(smtp, username="relay@acme.example", password="not-it")
        with pytest.raises(AuthError) as info:
            await build(block, "mail").deliver(parse(fixture(MISSED)), ctx_for("mail"))
    assert info.value.status_code == 535
    assert "`username` / `password` in config.yaml" in str(info.value)
    assert "not-it" not in str(info.value)
    assert smtp.logins == [("LOGIN", "relay@acme.example", False)] and smtp.offered == []


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_tls_then_login_verifying_the_server_certificate(
    ca: trustme.CA, tmp_path: Path, ctx_for: Any, security: str
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    tls = {"starttls" if security == "starttls" else "implicit_tls": server_tls(ca)}
    async with SmtpFake(users=USERS, **tls) as smtp:  # STARTTLS is required before MAIL/AUTH
        block = mail(
            smtp,
            security=security,
            ca_file=str(ca_file),
            username="relay@acme.example",
            password=USERS["relay@acme.example"],
        )
        await build(block, "mail").deliver(parse(fixture(MISSED)), ctx_for("mail"))
    assert [ok for _, _, ok in smtp.logins] == [True]
    assert len(smtp.accepted) == 1


async def test_starttls_is_never_silently_skipped(ctx_for: Any, smtp: SmtpFake) -> None:
    with pytest.raises(PermanentError, match="STARTTLS"):
        await build(mail(smtp, security="starttls"), "mail").deliver(
            parse(fixture(MISSED)), ctx_for("mail")
        )
    assert smtp.offered == []


async def test_an_unknown_certificate_is_not_trusted(ca: trustme.CA, ctx_for: Any) -> None:
    async with SmtpFake(implicit_tls=server_tls(ca)) as smtp:
        with pytest.raises(RetryableError):
            await build(mail(smtp, security="tls"), "mail").deliver(
                parse(fixture(MISSED)), ctx_for("mail")
            )
    assert smtp.offered == []


# -- idempotence --------------------------------------------------------------------------------


async def test_recipients_that_accepted_never_get_it_again(ctx_for: Any, smtp: SmtpFake) -> None:
    smtp.refuse("lead@acme.example", "450 4.2.1 Mailbox busy, try later")
    conn = build(mail(smtp), "mail")
    event = parse(fixture(MISSED))
    with pytest.raises(RetryableError) as info:
        await conn.deliver(event, ctx_for("mail", attempt=1))
    assert "lead@acme.example: 450 4.2.1 Mailbox busy" in str(info.value)
    smtp.accept("lead@acme.example")
    await conn.deliver(event, ctx_for("mail", attempt=2))
    await conn.deliver(event, ctx_for("mail", delivery_id=99))  # a replay: nothing left to send
    first, second = smtp.accepted
    assert (first.rcpt_tos, second.rcpt_tos) == (["ops@acme.example"], ["lead@acme.example"])
    assert first.message["Message-ID"] == second.message["Message-ID"]
    assert second.message["To"] == "ops@acme.example, Lead <lead@acme.example>"


async def test_a_recipient_refused_with_550_is_permanent(ctx_for: Any, smtp: SmtpFake) -> None:
    for to in ("ops@acme.example", "lead@acme.example"):
        smtp.refuse(to, "550 5.1.1 No such user")
    with pytest.raises(PermanentError) as info:
        await build(mail(smtp), "mail").deliver(parse(fixture(MISSED)), ctx_for("mail"))
    assert "ops@acme.example: 550 5.1.1 No such user" in str(info.value)
    assert info.value.status_code == 550 and smtp.offered == []


async def test_an_unreachable_server_is_retried(ctx_for: Any) -> None:
    async with SmtpFake() as gone:
        port = gone.port  # free a moment ago, closed now
    block = {**mail(gone), "port": port}
    with pytest.raises(RetryableError, match="smtp"):
        await build(block, "mail").deliver(parse(fixture(MISSED)), ctx_for("mail"))


async def test_the_message_id_names_integration_call_phase_and_connector(
    ctx_for: Any, smtp: SmtpFake
) -> None:
    conn, other = build(mail(smtp), "mail"), build(mail(smtp), "mail-2")
    missed, record = parse(fixture(MISSED)), parse(fixture("call_completed"))
    legacy = json.loads(fixture(MISSED))
    legacy["integrationId"] = "h3p9ta"
    elsewhere = parse(json.dumps(legacy).encode())
    ids = {
        conn.message_id(missed, ctx_for("mail")),
        conn.message_id(missed, ctx_for("mail", delivery_id=2, attempt=3)),  # same → same
        other.message_id(missed, ctx_for("mail-2")),
        conn.message_id(record, ctx_for("mail")),
        conn.message_id(elsewhere, ctx_for("mail")),
        conn.message_id(parse(fixture("call_live_completed")), ctx_for("mail")),
    }
    assert len(ids) == 5
    assert expected_message_id("q7m2xk", MISSED_CALL_ID, "record", "mail") in ids


# -- templates and configuration ----------------------------------------------------------------


async def test_templates_by_file_and_timezone(ctx_for: Any, smtp: SmtpFake, tmp_path: Path) -> None:
    subject = tmp_path / "subject.j2"
    subject.write_text("[{{ integration.name }}] {{ caller | party }} rang {{ callee.name }}\n")
    templates = {"missed_call": {"subject": {"file": str(subject)}, "html": "<p>{{ call.id }}</p>"}}
    conn = build(mail(smtp, templates=templates, timezone="Europe/Rome"), "mail")
    await conn.deliver(parse(fixture(MISSED)), ctx_for("mail"))
    await conn.deliver(parse(fixture("presence_user")), ctx_for("mail", delivery_id=2))
    missed, presence = (a.message for a in smtp.accepted)
    assert missed["Subject"] == "[ACME head office] +33142685300 rang Giulia Rossi"
    assert "When:            2025-11-29 12:16 CET" in missed.get_body(("plain",)).get_content()
    assert missed.get_body(("html",)).get_content().strip() == f"<p>{MISSED_CALL_ID}</p>"
    assert presence["Subject"] == "giulia.rossi@example.org is now dnd"
    assert presence.get_body(("html",)) is None  # presence notices are plain text
    text = presence.get_content()
    assert "is now dnd until 2025-11-29 13:00 CET." in text and '"Training"' in text


async def test_check_logs_in_without_sending(store: Store, http: httpx.AsyncClient) -> None:
    ctx = ConnectorContext(name="mail", http=http, store=store, limiters=Limiters())
    async with SmtpFake(users=USERS, mechanisms=("LOGIN",)) as smtp:
        good = mail(smtp, username="relay@acme.example", password=USERS["relay@acme.example"])
        await build(good, "mail").check(ctx)
        with pytest.raises(AuthError, match="smtp: 535"):
            await build({**good, "password": "nope"}, "mail").check(ctx)
    assert [ok for _, _, ok in smtp.logins] == [True, False] and smtp.offered == []


BASE = {"type": "email", "host": "smtp.acme.example", "from": "relay@acme.example"}
BASE["to"] = ["ops@acme.example"]


@pytest.mark.parametrize(
    ("block", "words"),
    [
        (
            {**BASE, "templates": {"missed_call": {"subject": "{{ call.id"}}},
            "`templates.missed_call.subject`: template error on line 1",
        ),
        (
            {**BASE, "templates": {"call_summary": {"html": "{{ 1 / 0 }}"}}},
            "`templates.call_summary.html`: fails on the sample call_completed: ZeroDivisionError",
        ),
        (
            {**BASE, "templates": {"missed_call": {"text": {"file": "/nonexistent.j2"}}}},
            "`templates.missed_call.text`: cannot read template file /nonexistent.j2",
        ),
        ({**BASE, "templates": {"voicemail": {}}}, "`templates.voicemail`: unknown message kind"),
        ({**BASE, "to": ["ops"]}, "`to`: 'ops' is not an email address"),
        ({**BASE, "to": []}, "`to` must list at least one recipient"),
        ({**BASE, "from": "Relay"}, "`from`: 'Relay' is not an email address"),
        ({**BASE, "username": "relay"}, "`username` and `password` go together"),
        ({**BASE, "timezone": "Mars/Olympus"}, "`timezone`: unknown time zone 'Mars/Olympus'"),
        ({**BASE, "ca_file": "/nonexistent.pem"}, "`ca_file`: cannot load /nonexistent.pem"),
    ],
)
def test_bad_email_config_names_the_key(block: dict[str, Any], words: str) -> None:
    message = config_error(block, "mail")
    assert message.startswith("$.connectors.mail: "), message
    assert words in message, message


def test_bad_security_mode_is_rejected_with_its_path() -> None:
    message = config_error({**BASE, "security": "ssl"}, "mail")
    assert message.startswith("$.connectors.mail.security: "), message


def test_check_config_masks_the_password(tmp_path: Path) -> None:
    block = {**BASE, "username": "relay@acme.example", "password": "pa55-s3cr3t"}
    result = check_config(tmp_path, {"mail": block})
    assert result.exit_code == 0, result.output
    assert "mail (email)" in result.output and "pa55-s3cr3t" not in result.output


# -- what strangers write: text in HTML, and only https recording links ---------------------


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
