"""The first-party log/file/webhook connectors, driven through deliver() with a real context.

The webhook target is a real loopback server (tests/fakes/receiver.py), the store a real SQLite
database at schema head: what is asserted is what arrived on the wire or on disk.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from relay.plugins.log import FileConnector, LogConnector
from relay.plugins.webhook import WebhookConnector

from relay import AuthError, Connector, PermanentError, RetryableError
from relay.config import ConfigError, parse_config
from relay.connector import DeliveryContext, Limiters
from relay.store.records import Store
from relay.wildix import Event, parse
from tests.fakes.receiver import Receiver
from tests.support.samples import fixture_bytes

IDS = {"type", "integration_id", "event_id", "delivery_id"}
TYPES: dict[str, type[Connector]] = {"webhook": WebhookConnector, "log": LogConnector}
TYPES["file"] = FileConnector


def load(name: str) -> Event:
    return parse(fixture_bytes(name))


def build(name: str, block: dict[str, Any]) -> Any:
    """A connector instance exactly as the service makes one: through the config loader."""
    text = yaml.safe_dump({"connectors": {name: block}})
    inst = parse_config(text, connector_types=TYPES, env={}).connectors[name]
    return inst.cls(name, inst.options)


def config_error(block: dict[str, Any], name: str = "out") -> str:
    text = yaml.safe_dump({"connectors": {name: block}})
    with pytest.raises(ConfigError) as info:
        parse_config(text, connector_types=TYPES, env={})
    return str(info.value)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as r:
        yield r


@pytest.fixture
def ctx_for(store: Store, http: httpx.AsyncClient) -> Any:
    """A factory of real delivery contexts: ctx_for(name, delivery_id=..., attempt=...)."""
    limiters = Limiters()

    def make(
        name: str = "out", *, delivery_id: int = 41, event_id: int = 7, attempt: int = 1
    ) -> DeliveryContext:
        return DeliveryContext(
            name=name,
            http=http,
            store=store,
            limiters=limiters,
            attempt=attempt,
            delivery_id=delivery_id,
            event_id=event_id,
            integration_id="q7m2xk",
            integration_name="ACME head office",
        )

    return make


def standard_webhooks_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """Computed from the spec text, independently of plugins/webhook.py."""
    key = base64.b64decode(secret[len("whsec_") :]) if secret.startswith("whsec_") else secret
    if isinstance(key, str):
        key = key.encode()
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


# -- webhook: what goes on the wire ------------------------------------------------------------


async def test_raw_mode_forwards_the_wildix_body_byte_exact(receiver: Receiver, ctx_for: Any):
    raw = fixture_bytes("call_completed.json")
    conn = build(
        "out",
        {"type": "webhook", "url": f"{receiver.url}/hook?k=v", "headers": {"X-Tenant": "acme"}},
    )
    ctx = ctx_for()
    await conn.deliver(parse(raw), ctx)

    (got,) = await receiver.wait_for(1)
    assert (got.method, got.path, got.query) == ("POST", "/hook", "k=v")
    assert got.body == raw
    assert got.headers["content-type"] == "application/json"
    assert got.headers["x-relay-event-id"] == "7"
    assert got.headers["x-relay-delivery-id"] == "41"
    assert got.headers["x-tenant"] == "acme"
    assert "x-signature" not in got.headers
    assert not any(h.startswith("webhook-") for h in got.headers)  # unsigned without a secret
    assert ctx.status_code == 200


async def test_envelope_mode_wraps_ids_view_and_original(receiver: Receiver, ctx_for: Any):
    event = load("call_live_progress_start.json")
    conn = build("out", {"type": "webhook", "url": receiver.url, "mode": "envelope"})
    await conn.deliver(event, ctx_for(delivery_id=5, event_id=3))

    (got,) = await receiver.wait_for(1)
    body = got.json()
    assert set(body) == {*IDS, "call_id", "time", "view", "raw"}
    assert body["type"] == "call:live:progress"
    assert body["integration_id"] == "q7m2xk"
    assert (body["event_id"], body["delivery_id"]) == (3, 5)
    assert body["call_id"] == event.call_id == "it_w204517_1764412210.77"
    assert body["time"].startswith("2025-11-29T10:30:10.512")
    assert body["raw"] == json.loads(event.raw)
    assert body["view"] == json.loads(json.dumps(event.view()))
    assert body["view"]["call"]["phase"] == "start"
    assert got.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    "secret",
    ["whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode(), "plain-secret"],
    ids=["whsec", "plain"],
)
async def test_standard_webhooks_signature_verifies_and_id_is_stable_across_retries(
    receiver: Receiver, ctx_for: Any, secret: str
):
    receiver.respond(503)
    event = load("call_completed.json")
    conn = build("out", {"type": "webhook", "url": receiver.url, "signing_secret": secret})

    with pytest.raises(RetryableError):
        await conn.deliver(event, ctx_for(delivery_id=99, attempt=1))
    await conn.deliver(event, ctx_for(delivery_id=99, attempt=2))
    await conn.deliver(event, ctx_for(delivery_id=100, attempt=1))

    first, second, other = await receiver.wait_for(3)
    for got in (first, second, other):
        ts = got.headers["webhook-timestamp"]
        assert abs(int(ts) - time.time()) < 60
        expected = standard_webhooks_signature(secret, got.headers["webhook-id"], ts, got.body)
        assert got.headers["webhook-signature"] == expected
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == "relay_99"
    assert other.headers["webhook-id"] != first.headers["webhook-id"]
    assert secret not in json.dumps([r.headers for r in (first, second, other)])


async def test_signature_covers_the_envelope_bytes_sent(receiver: Receiver, ctx_for: Any):
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    conn = build(
        "out",
        {"type": "webhook", "url": receiver.url, "mode": "envelope", "signing_secret": secret},
    )
    await conn.deliver(load("sms_status.json"), ctx_for())
    (got,) = await receiver.wait_for(1)
    h = got.headers
    expected = standard_webhooks_signature(
        secret, h["webhook-id"], h["webhook-timestamp"], got.body
    )
    assert h["webhook-signature"] == expected
    assert got.json()["type"] == "sms:status"


# -- webhook: the outcome contract -------------------------------------------------------------


async def test_server_error_is_retryable(receiver: Receiver, ctx_for: Any):
    receiver.respond(500, body="database down")
    conn = build("out", {"type": "webhook", "url": receiver.url})
    ctx = ctx_for()
    with pytest.raises(RetryableError) as info:
        await conn.deliver(load("call_completed.json"), ctx)
    assert info.value.status_code == 500 and ctx.status_code == 500
    assert info.value.retry_after is None
    assert "database down" in str(info.value)


async def test_429_retry_after_is_honoured(receiver: Receiver, ctx_for: Any):
    receiver.respond(429, headers={"Retry-After": "7"})
    conn = build("out", {"type": "webhook", "url": receiver.url})
    with pytest.raises(RetryableError) as info:
        await conn.deliver(load("call_completed.json"), ctx_for())
    assert info.value.retry_after == 7
    assert info.value.status_code == 429


async def test_client_errors_are_permanent(receiver: Receiver, ctx_for: Any):
    receiver.respond(400, body='{"error":"bad"}')
    conn = build("out", {"type": "webhook", "url": receiver.url})
    with pytest.raises(PermanentError) as info:
        await conn.deliver(load("call_completed.json"), ctx_for())
    assert type(info.value) is PermanentError


async def test_rejected_credentials_are_retried_and_say_what_to_fix(
    receiver: Receiver, ctx_for: Any
):
    receiver.respond(401, body='{"error":"bad token"}')
    conn = build("out", {"type": "webhook", "url": receiver.url})
    with pytest.raises(AuthError) as info:
        await conn.deliver(load("call_completed.json"), ctx_for())
    assert isinstance(info.value, RetryableError) and not isinstance(info.value, PermanentError)
    assert info.value.status_code == 401
    assert "credentials rejected" in info.value.message and "config.yaml" in info.value.message


async def test_timeout_raises_a_retryable_transport_error(receiver: Receiver, ctx_for: Any):
    receiver.delay(30)  # far longer than any slow machine stretches a 0.2 s timeout
    conn = build("out", {"type": "webhook", "url": receiver.url, "timeout": 0.2})
    started = time.monotonic()
    with pytest.raises((httpx.TimeoutException, RetryableError)):
        await conn.deliver(load("call_completed.json"), ctx_for())
    assert time.monotonic() - started < 10  # the per-request timeout cut it short
    await receiver.wait_for(1)


async def test_unreachable_target_raises_a_transport_error(ctx_for: Any):
    async with Receiver() as gone:
        url = gone.url  # a port that was just free and is closed again
    conn = build("out", {"type": "webhook", "url": url})
    with pytest.raises(httpx.TransportError):
        await conn.deliver(load("call_completed.json"), ctx_for())


async def test_check_is_offline(receiver: Receiver, store: Store, http: httpx.AsyncClient):
    from relay.connector import ConnectorContext

    conn = build("out", {"type": "webhook", "url": receiver.url})
    await conn.check(ConnectorContext(name="out", http=http, store=store, limiters=Limiters()))
    assert receiver.requests == []


# -- file and log ------------------------------------------------------------------------------


async def test_file_connector_appends_one_json_line_per_event(tmp_path: Path, ctx_for: Any):
    path = tmp_path / "sub" / "events.jsonl"
    conn = build("sink", {"type": "file", "path": str(path), "include_raw": True})
    first, second = load("call_completed.json"), load("presence_user.json")
    await conn.deliver(first, ctx_for("sink", delivery_id=1, event_id=10))
    await conn.deliver(second, ctx_for("sink", delivery_id=2, event_id=11))

    lines = path.read_bytes().splitlines()
    assert len(lines) == 2
    rec = json.loads(lines[0])
    assert set(rec) == {*IDS, "received", "call_id", "view", "raw"}
    assert (rec["event_id"], rec["delivery_id"], rec["type"]) == (10, 1, "call:completed")
    assert rec["call_id"] == first.call_id and rec["integration_id"] == first.integration_id
    assert rec["raw"] == json.loads(first.raw)
    assert rec["view"]["call"]["phase"] == "record"
    assert rec["received"].endswith("+00:00")
    rec2 = json.loads(lines[1])
    assert rec2["type"] == "presence:user" and rec2["call_id"] is None


async def test_file_connector_omits_raw_by_default(tmp_path: Path, ctx_for: Any):
    path = tmp_path / "events.jsonl"
    conn = build("sink", {"type": "file", "path": str(path)})
    await conn.deliver(load("sms_status.json"), ctx_for("sink"))
    (line,) = path.read_text().splitlines()
    assert "raw" not in json.loads(line)


async def test_log_connector_emits_one_json_record(caplog: pytest.LogCaptureFixture, ctx_for: Any):
    conn = build("debug", {"type": "log", "include_raw": True})
    event = load("call_completed_missed_inbound.json")
    with caplog.at_level(logging.INFO, logger="relay.connector.debug"):
        await conn.deliver(event, ctx_for("debug", delivery_id=3))
    records = [r for r in caplog.records if r.name == "relay.connector.debug"]
    assert len(records) == 1
    assert records[0].levelno == logging.INFO
    assert records[0].delivery_id == 3  # bound by the context, for the JSON log formatter
    assert records[0].getMessage() == "event call:completed"
    line = records[0].event  # a field: an object in JSON logs, not JSON inside the message
    assert line["type"] == "call:completed"
    assert line["integration_id"] == event.integration_id
    assert line["call_id"] == event.call_id
    assert line["summary"]["status"] == "missed"
    assert line["summary"]["direction"] == "inbound"
    assert line["raw"] == json.loads(event.raw)


async def test_log_connector_leaves_raw_out_by_default(
    caplog: pytest.LogCaptureFixture, ctx_for: Any
):
    conn = build("debug", {"type": "log"})
    with caplog.at_level(logging.INFO, logger="relay.connector.debug"):
        await conn.deliver(load("presence_telephony.json"), ctx_for("debug"))
    (record,) = [r for r in caplog.records if r.name == "relay.connector.debug"]
    line = record.event
    assert "raw" not in line
    assert line["type"] == "presence:telephony" and line["summary"]


# -- configuration -----------------------------------------------------------------------------


def test_valid_webhook_config_gets_its_defaults():
    conn = build("out", {"type": "webhook", "url": "https://hooks.example.org/x"})
    assert (conn.config.mode, conn.config.timeout, conn.config.headers) == ("raw", 10.0, {})
    assert conn.config.signing_secret is None


HOOK = {"type": "webhook", "url": "https://hooks.example.org/in"}


@pytest.mark.parametrize(
    ("block", "path", "words"),
    [
        ({**HOOK, "url": "ftp://files.example.org/in"}, "$.connectors.out", "url"),
        ({**HOOK, "url": "hooks.example.org/in"}, "$.connectors.out", "url"),
        ({**HOOK, "tokn": "x"}, "$.connectors.out.tokn", "unknown key"),
        ({**HOOK, "mode": "json"}, "$.connectors.out.mode", "json"),
        ({**HOOK, "timeout": 0}, "$.connectors.out", "timeout"),
        ({**HOOK, "headers": {"Webhook-Id": "x"}}, "$.connectors.out", "webhook-id"),
        ({**HOOK, "signing_secret": "whsec_%%%"}, "$.connectors.out", "signing_secret"),
        ({"type": "webhook"}, "$.connectors.out", "url"),
        ({"type": "file"}, "$.connectors.out", "path"),
        ({"type": "log", "include_raw": "yes"}, "$.connectors.out.include_raw", "bool"),
    ],
)
def test_bad_config_is_rejected_with_its_key_path(block: dict[str, Any], path: str, words: str):
    message = config_error(block)
    assert message.startswith(f"{path}:"), message
    assert words.lower() in message.lower(), message


def test_bad_url_message_does_not_echo_the_url():
    message = config_error({"type": "webhook", "url": "ftp://user:s3cr3t@example.org/?token=abc"})
    assert "s3cr3t" not in message and "token=abc" not in message


# -- the fake receiver itself ------------------------------------------------------------------


async def test_receiver_replays_its_script_then_answers_ok(receiver: Receiver):
    receiver.respond(201, body=b"made", headers={"X-Id": "1"}, times=2)
    receiver.respond(418)
    async with httpx.AsyncClient(base_url=receiver.url) as client:
        got = [await client.request(m, "/p") for m in ("PUT", "DELETE", "PATCH", "GET")]
    assert [r.status_code for r in got] == [201, 201, 418, 200]
    assert got[0].text == "made" and got[0].headers["x-id"] == "1" and got[3].text == "ok"
    assert [r.method for r in receiver.requests] == ["PUT", "DELETE", "PATCH", "GET"]


async def test_receiver_wait_for_reports_what_arrived(receiver: Receiver):
    async with httpx.AsyncClient() as client:
        await client.post(f"{receiver.url}/only", content=b"x")
    with pytest.raises(AssertionError, match="got 1: \\['POST /only"):
        await receiver.wait_for(2, timeout=0.2)


def test_receiver_runs_in_its_own_thread_for_sync_callers():
    receiver = Receiver()
    receiver.start_in_thread()
    try:
        receiver.respond(202)
        response = httpx.post(f"{receiver.url}/sync", json={"a": 1})
        assert response.status_code == 202
        assert receiver.requests[0].json() == {"a": 1}
    finally:
        receiver.stop_thread()
    with pytest.raises(httpx.ConnectError):
        httpx.get(receiver.url, timeout=1)
