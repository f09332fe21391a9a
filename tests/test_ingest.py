"""The webhook source end to end over HTTP: status codes, byte-exact storage, dedupe, atomicity."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from relay.store import db
from relay.store.tables import rejections
from tests.fakes.receiver import Receiver
from tests.support.relay import SECRET, make_settings, run_relay
from tests.support.samples import CURRENT, LEGACY, fixture


async def test_fixtures_of_both_generations_are_stored_byte_exact_and_delivered(
    db_url: str,
) -> None:
    async with Receiver() as receiver:
        settings = make_settings(db_url, {"out": {"type": "webhook", "url": receiver.url}})
        async with run_relay(settings) as relay:
            for name in CURRENT:
                r = await relay.post(fixture(name))
                assert r.status_code == 200, (name, r.text)
                assert r.json()["status"] == "accepted"
            for name in LEGACY:
                r = await relay.post(fixture(name), integration="h3p9ta")
                assert r.status_code == 200, (name, r.text)

            stored = {row.body_sha256: row for row in await relay.events()}
            assert len(stored) == len(CURRENT) + len(LEGACY)
            for name in CURRENT + LEGACY:
                body = fixture(name)
                row = stored[hashlib.sha256(body).hexdigest()]
                assert bytes(row.raw) == body
                assert row.transport == "webhook"
            calls = {r.call_id for r in stored.values() if r.call_id}
            assert "it_w204517_1764412210.77" in calls and "it_w204517_1764416001.12" in calls

            settled = await relay.settled()
            assert all(d.state == "succeeded" for d in settled)
            got = await receiver.wait_for(len(CURRENT) + len(LEGACY))
            assert sorted(r.body for r in got) == sorted(fixture(n) for n in CURRENT + LEGACY)


async def test_duplicate_bytes_are_acknowledged_and_create_nothing(db_url: str) -> None:
    async with Receiver() as receiver:
        settings = make_settings(db_url, {"out": {"type": "webhook", "url": receiver.url}})
        async with run_relay(settings) as relay:
            body = fixture("call_completed")
            first = await relay.post(body)
            second = await relay.post(body)
            assert first.status_code == second.status_code == 200
            assert first.json()["status"] == "accepted"
            assert second.json() == {
                "status": "duplicate",
                "event_id": first.json()["event_id"],
                "deliveries": 0,
            }
            # /webhooks without the id in the path dedupes against the same rows
            third = await relay.post(body, integration=None)
            assert third.json()["status"] == "duplicate"
            assert len(await relay.events()) == 1
            assert len(await relay.deliveries()) == 1
            await relay.settled()
            assert len(receiver.requests) == 1


@pytest.mark.parametrize(
    ("case", "status", "reason"),
    [
        ("bad signature", 401, "bad signature"),
        ("missing signature", 401, "missing x-signature"),
        ("unknown integration", 404, "unknown integration"),
        ("integrationId mismatch", 400, "body integrationId does not match the URL"),
        ("not json", 400, "not JSON"),
        ("not an envelope", 400, "missing field"),
        ("too large", 413, "larger than"),
        ("no integrationId without path", 400, "integrationId"),
        ("non-ASCII signature", 401, "bad signature"),
        ("nested too deeply", 400, "nested too deeply"),
        ("nested too deeply without path", 400, "integrationId"),
        ("a top-level array nested too deeply", 400, "nested too deeply"),
    ],
)
async def test_rejected_requests_get_their_status_and_store_no_event(
    db_url: str, case: str, status: int, reason: str
) -> None:
    good = fixture("call_completed")
    kwargs: dict = {}
    body = good
    if case == "bad signature":
        kwargs["secret"] = "not-the-secret"
    elif case == "missing signature":
        kwargs["secret"] = None
    elif case == "unknown integration":
        kwargs["integration"] = "zzzzzz"
    elif case == "integrationId mismatch":
        kwargs["integration"] = "h3p9ta"
    elif case == "not json":
        body = b"this is not json"
    elif case == "not an envelope":
        body = b'{"hello": "world"}'
    elif case == "too large":
        body = b'{"pad": "' + b"x" * 5000 + b'"}'
    elif case == "no integrationId without path":
        body, kwargs["integration"] = b'{"type": "call:completed"}', None
    elif case == "non-ASCII signature":  # a header is bytes the client chose, not hex
        kwargs["secret"], kwargs["headers"] = None, {"x-signature": "é".encode("latin-1") * 64}
    elif case == "a top-level array nested too deeply":  # refused as no object, then decoded
        body = b"[" * 1400 + b"]" * 1400
    elif case.startswith("nested too deeply"):  # deeper than the decoder follows, under 4 KiB
        body = good.rstrip()[:-1] + b', "pad": ' + b"[" * 1400 + b"]" * 1400 + b"}"
        if case.endswith("without path"):
            kwargs["integration"], kwargs["secret"] = None, None

    async with Receiver() as receiver:
        settings = make_settings(
            db_url,
            {"out": {"type": "webhook", "url": receiver.url}},
            extra={"server": {"max_body_size": 4096}},
        )
        async with run_relay(settings) as relay:
            r = await relay.post(body, **kwargs)
            assert r.status_code == status, r.text
            assert reason.lower() in r.json()["error"].lower()
            assert SECRET not in r.text
            assert await relay.events() == []
            assert await relay.deliveries() == []
            rejected = await relay.rows(rejections)
            assert len(rejected) == 1
            assert rejected[0].status_code == status
            assert reason.lower() in rejected[0].reason.lower()
            assert receiver.requests == []


async def test_store_failure_is_503_and_nothing_half_written(db_url: str) -> None:
    """The event insert succeeds, the deliveries insert fails: the whole transaction is undone."""
    async with Receiver() as receiver:
        settings = make_settings(db_url, {"out": {"type": "webhook", "url": receiver.url}})
        async with run_relay(settings, dispatch=False) as relay:
            async with relay.store.engine.begin() as conn:
                await conn.execute(text("ALTER TABLE deliveries RENAME TO deliveries_away"))
            body = fixture("call_completed")
            r = await relay.post(body)
            assert r.status_code == 503
            assert "retry" in r.json()["error"]
            assert await relay.events() == []
            async with relay.store.engine.begin() as conn:
                await conn.execute(text("ALTER TABLE deliveries_away RENAME TO deliveries"))
            # Wildix retries the same bytes: now it is stored once, with its delivery.
            r = await relay.post(body)
            assert r.status_code == 200 and r.json()["status"] == "accepted"
            assert len(await relay.events()) == 1
            assert len(await relay.deliveries()) == 1


async def test_routes_filter_events_and_where(db_url: str) -> None:
    async with Receiver() as crm, Receiver() as alerts:
        settings = make_settings(
            db_url,
            {
                "crm": {"type": "webhook", "url": crm.url},
                "alerts": {"type": "webhook", "url": alerts.url},
            },
            routes=[
                {"connector": "crm", "events": ["call:*"]},
                {
                    "connector": "alerts",
                    "events": ["call:completed", "call:end"],
                    "where": {"call.status": "missed", "call.direction": "inbound"},
                },
            ],
        )
        async with run_relay(settings) as relay:
            for name in ["call_completed", "call_completed_missed_inbound", "presence_user"]:
                assert (await relay.post(fixture(name))).status_code == 200
            rows = await relay.settled()
            assert sorted(d.connector for d in rows) == ["alerts", "crm", "crm"]
            missed = await alerts.wait_for(1)
            assert missed[0].body == fixture("call_completed_missed_inbound")
            assert len(await crm.wait_for(2)) == 2
            assert len(await relay.events()) == 3  # presence stored, routed nowhere


async def test_health_and_readiness(db_url: str) -> None:
    settings = make_settings(db_url, {"out": {"type": "log"}})
    async with run_relay(settings) as relay:
        health = await relay.client.get(relay.url + "/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        ready = await relay.client.get(relay.url + "/readyz")
        assert ready.status_code == 200
        assert ready.json()["schema"] == ready.json()["schema_head"] == db.head_revision()
        async with relay.store.engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = 'old'"))
        stale = await relay.client.get(relay.url + "/readyz")
        assert stale.status_code == 503 and stale.json()["schema"] == "old"


async def test_the_webhook_answers_only_posts_to_its_own_paths(db_url: str) -> None:
    async with run_relay(make_settings(db_url, {"out": {"type": "log"}})) as relay:
        got = await relay.client.get(relay.url + "/webhooks/q7m2xk")
        assert got.status_code == 405 and got.headers["allow"] == "POST"
        for path in ("/webhooks/q7m2xk/extra", "/webhooksq7m2xk"):
            r = await relay.client.post(relay.url + path, content=fixture("call_completed"))
            assert r.status_code == 404, path
        assert (await relay.post(fixture("call_completed"))).json()["status"] == "accepted"
        assert len(await relay.events()) == 1


async def test_a_streamed_body_over_the_limit_is_413_without_a_length(db_url: str) -> None:
    """No Content-Length to refuse up front: the limit still holds while reading."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"x" * 1024

    settings = make_settings(
        db_url, {"out": {"type": "log"}}, extra={"server": {"max_body_size": 4096}}
    )
    async with run_relay(settings) as relay:
        r = await relay.client.post(relay.url + "/webhooks/q7m2xk", content=chunks())
        assert r.status_code == 413 and "larger than 4096" in r.json()["error"]
        assert await relay.events() == []
        [rejected] = await relay.rows(rejections)
        assert rejected.status_code == 413
