"""Secrets never reach what people read: the process log, stored errors (through the admin API
and the dashboard), and `relay check-config`, even when a target echoes them back; and a
webhook URL's ``user:password@`` is sent as basic auth without ever being shown."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from relay import logs
from relay.config import ConfigError, parse_config
from relay.registry import connector_types
from relay.secrets import Redactor, mask, secret_values
from tests.fakes.receiver import Receiver
from tests.support.cli import run
from tests.support.operations import TOKEN, admin_settings, api
from tests.support.relay import (
    SECRET,
    RunningRelay,
    call_body,
    config_dict,
    run_relay,
    start_worker,
    write_config,
)

API_KEY = "ak-live-4f9QzT2wXv8LmN3p"
COOKIE = "sid=Ck7Yh2Pq9Rw4Zt6Vb1Nm"
# Not configured anywhere: the target's own credential, echoed in its error body.
TARGET_BEARER = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.Qm9ndXNTaWduYXR1cmU"
USER, PASSWORD = "relay-bot", "pw-Hx83!kQ2@zV"
NEVER_SHOWN = (API_KEY, COOKIE, "Ck7Yh2Pq9Rw4Zt6Vb1Nm", TARGET_BEARER, SECRET, TOKEN)


def _connectors(url: str) -> dict[str, Any]:
    return {
        "hook": {
            "type": "webhook",
            "url": url,
            "headers": {"X-Api-Key": API_KEY, "Cookie": COOKIE},
            "delivery": {"max_attempts": 1},
        }
    }


def _leaks(text: str, secrets: tuple[str, ...] = NEVER_SHOWN) -> list[str]:
    return [s for s in secrets if s in text]


async def _delivered_by_a_worker(relay: RunningRelay, config: Path) -> tuple[Any, str]:
    """The one delivery, settled by a real `relay worker` process, and that process's log."""
    worker = start_worker(config)
    try:
        [row] = await relay.settled(timeout=30)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
    return row, stderr.decode()


async def _dashboard(relay: RunningRelay, *paths: str) -> str:
    """The dashboard pages' HTML, after logging in as an admin does."""
    ui = relay.url + "/ui"
    login = await relay.client.get(ui + "/login")
    csrf = re.search(r'name="_csrf_token" value="([^"]+)"', login.text)
    assert csrf is not None
    done = await relay.client.post(ui + "/login", data={"token": TOKEN, "_csrf_token": csrf[1]})
    assert done.status_code == 302
    pages = [await relay.client.get(ui + path) for path in paths]
    assert all(p.status_code == 200 for p in pages), [p.status_code for p in pages]
    return "".join(p.text for p in pages)


async def test_an_echoed_api_key_and_bearer_token_reach_no_log_api_page_or_cli(
    db_url: str, tmp_path: Path
) -> None:
    """A target answers 400 with the headers relay sent (X-Api-Key, Cookie) and a Bearer token of
    its own. The worker process's log, last_error through the admin API and the dashboard, and
    `relay check-config` show none of them."""
    async with Receiver() as receiver:
        receiver.echo(400, text=f"use Bearer {TARGET_BEARER}")
        connectors = _connectors(receiver.url + "/in")
        extra = {"admin": {"token": TOKEN, "secure_cookies": False}}
        data = config_dict(db_url, connectors, extra=extra)
        data["logging"] = {"level": "DEBUG", "format": "json"}
        config = write_config(tmp_path / "relay.yaml", data)
        settings = admin_settings(db_url, connectors, admin={"secure_cookies": False})
        async with run_relay(settings, dispatch=False) as relay:
            event_id = (await relay.post(call_body("secrets_1"))).json()["event_id"]
            row, log = await _delivered_by_a_worker(relay, config)
            [request] = receiver.requests
            assert request.headers["x-api-key"] == API_KEY  # the target did get the key...
            assert row.state == "dead" and "HTTP 400" in row.last_error
            assert _leaks(row.last_error) == []  # ...but the stored error does not keep it
            for shown_masked in ("Bearer *****", "x-api-key: *****", "cookie: *****"):
                assert shown_masked in row.last_error, row.last_error

            shown = [
                await api(relay, "GET", f"/events/{event_id}"),
                await api(relay, "GET", f"/deliveries/{row.id}"),
                await api(relay, "GET", "/deliveries?state=dead"),
                await api(relay, "GET", "/connectors"),
                await api(relay, "GET", "/integrations"),
            ]
            assert "HTTP 400" in str(shown)
            assert _leaks(str(shown)) == []
            html = await _dashboard(
                relay, "/", f"/events/{event_id}", "/deliveries?state=dead", "/overview/panel"
            )
            assert "HTTP 400" in html
            assert _leaks(html) == []

    assert "delivery dead" in log and "*****" in log
    assert _leaks(log) == []

    checked = run("check-config", config=config)
    assert checked.returncode == 0, checked.stderr
    assert "X-Api-Key" in checked.stdout and "Cookie" in checked.stdout
    assert _leaks(checked.stdout + checked.stderr) == []


async def test_url_userinfo_is_sent_as_basic_auth_and_never_shown(
    db_url: str, tmp_path: Path
) -> None:
    """``https://user:password@host`` delivers with ``Authorization: Basic``, the URL the target
    sees has no userinfo, and neither the password nor its Basic form is logged or printed."""
    async with Receiver() as receiver:
        url = receiver.url.replace("://", f"://{USER}:{PASSWORD.replace('@', '%40')}@") + "/in"
        receiver.echo(503)  # the first attempt's error body carries the Authorization header
        connectors = {"hook": {"type": "webhook", "url": url}}
        data = config_dict(db_url, connectors)
        data["logging"] = {"level": "DEBUG", "format": "text"}
        config = write_config(tmp_path / "relay.yaml", data)
        async with run_relay(admin_settings(db_url, connectors), dispatch=False) as relay:
            await relay.post(call_body("basic_1"))
            row, log = await _delivered_by_a_worker(relay, config)
            _, second = receiver.requests
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert row.state == "succeeded"
    assert second.headers["authorization"] == f"Basic {basic}"
    assert (second.path, second.headers["host"]) == ("/in", receiver.url.split("//")[1])
    assert "@" not in second.headers["host"]
    secrets = (PASSWORD, PASSWORD.replace("@", "%40"), basic)
    assert "HTTP 503" in log  # the failed first attempt was logged, scrubbed
    assert _leaks(log, secrets) == []
    checked = run("check-config", config=config)
    assert checked.returncode == 0, checked.stderr
    assert f"{USER}:*****@" in checked.stdout
    assert _leaks(checked.stdout, secrets) == []


def test_url_userinfo_and_an_authorization_header_are_a_config_error() -> None:
    text = """
connectors:
  hook:
    type: webhook
    url: https://bot:pw-Hx83kQ2zV@hooks.example.org/in
    headers: {Authorization: Bearer abcdefgh}
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, connector_types=connector_types([]), env={})
    assert caught.value.path == "$.connectors.hook"
    assert "headers.Authorization" in caught.value.message
    assert "pw-Hx83kQ2zV" not in str(caught.value)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_log_lines_are_scrubbed_in_message_args_fields_and_tracebacks(fmt: str) -> None:
    """Both formats: a secret passed as an arg, an extra field, or inside a traceback."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.configure("DEBUG", fmt, redact=Redactor([API_KEY]), stream=stream)
    try:
        log = logging.getLogger("relay.test_secrets")
        log.warning("target said %s", f"bad key {API_KEY}", extra={"echo": [API_KEY]})
        try:
            raise ValueError(f"Authorization: Bearer {TARGET_BEARER}")
        except ValueError:
            log.exception("connector raised")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    text = stream.getvalue()
    assert "bad key *****" in text and "Bearer *****" in text
    if fmt == "json":  # an extra field, here a list, is scrubbed too
        assert json.loads(text.splitlines()[0])["echo"] == ["*****"]
    assert _leaks(text) == []


def test_a_secret_cut_by_an_excerpt_loses_its_start_too() -> None:
    """relay.errors.excerpt cuts long error bodies; a secret cut in two must not leave its head."""
    redact = Redactor([API_KEY])
    assert redact(f"HTTP 400 x-api-key: {API_KEY[:9]}…") == "HTTP 400 x-api-key: *****…"
    assert redact("Basic authentication failed") == "Basic authentication failed"


def test_hyphenated_api_key_and_cookie_options_count_as_secret() -> None:
    """A plugin option named like a header (``X-Api-Key``, ``Cookie``) is a secret too."""
    options = {"X-Api-Key": API_KEY, "Cookie": COOKIE, "region": "eu-west-1"}
    assert mask(options) == {"X-Api-Key": "*****", "Cookie": "*****", "region": "eu-west-1"}
    assert sorted(secret_values(options)) == sorted([API_KEY, COOKIE])
