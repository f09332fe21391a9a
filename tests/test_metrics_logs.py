"""GET /metrics after a scripted run, and the JSON logs: ids as fields, numbers masked unless
``logging.show_numbers``, no secrets."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay import logs
from relay.wildix.numbers import mask
from tests.fakes.receiver import Receiver
from tests.fakes.sqs import MotoSqs
from tests.support.operations import AUTH, TOKEN, admin_settings, wait_state, webhook
from tests.support.relay import SECRET, call_body, run_relay
from tests.support.samples import fixture
from tests.support.sqs import consumer_when, sqs_settings

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(relay: object) -> Samples:
    response = await relay.client.get(relay.url + "/metrics", headers=AUTH)  # type: ignore[attr-defined]
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_expose_the_counters_after_a_scripted_run(db_url: str) -> None:
    async with Receiver() as ok_rx, Receiver() as bad_rx, Receiver() as slow_rx:
        ok_rx.respond(500, body="hiccup")  # one retry, then success
        bad_rx.respond(400, body="rejected")  # dead at once
        slow_rx.respond(503, headers={"retry-after": "3600"})  # parked for an hour
        connectors = {"m-ok": webhook(ok_rx), "m-dead": webhook(bad_rx), "m-slow": webhook(slow_rx)}
        routes = [
            {"connector": "m-ok", "events": ["call:completed"]},
            {"connector": "m-dead", "events": ["sms:*"]},
            {"connector": "m-slow", "events": ["presence:*"]},
        ]
        async with run_relay(admin_settings(db_url, connectors, routes)) as relay:
            before = await scrape(relay)
            await relay.post(call_body("m-call"))
            await relay.post(call_body("m-call"))  # the same bytes again: a duplicate
            await relay.post(fixture("sms_status"))
            await relay.post(fixture("presence_user"))
            assert (await relay.post(fixture("sms_status"), secret="wrong")).status_code == 401
            assert (await relay.post(fixture("sms_status"), integration="zz9")).status_code == 404
            rows = {d.connector: d for d in await relay.deliveries()}
            await wait_state(relay, rows["m-ok"].id, "succeeded")
            await wait_state(relay, rows["m-dead"].id, "dead")
            await slow_rx.wait_for(1)
            await wait_state(relay, rows["m-slow"].id, "pending")
            after = await scrape(relay)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    received = "relay_events_received_total"
    assert delta(received, integration="q7m2xk", type="call:completed", outcome="accepted") == 1
    assert delta(received, integration="q7m2xk", type="call:completed", outcome="duplicate") == 1
    assert delta(received, integration="q7m2xk", type="sms:status", outcome="accepted") == 1
    assert delta(received, integration="q7m2xk", type="", outcome="rejected") == 1
    # a path that names no configured integration is counted without growing the label set
    assert delta(received, integration="unknown", type="", outcome="rejected") == 1
    assert not [k for k in after if ("integration", "zz9") in k[1]]
    assert delta("relay_ingest_seconds_count", transport="webhook") == 4

    assert delta("relay_deliveries_total", connector="m-ok", outcome="retry") == 1
    assert delta("relay_deliveries_total", connector="m-ok", outcome="succeeded") == 1
    assert delta("relay_deliveries_total", connector="m-dead", outcome="dead") == 1
    assert delta("relay_deliveries_total", connector="m-slow", outcome="retry") == 1
    assert delta("relay_attempt_seconds_count", connector="m-ok") == 2

    assert value(after, "relay_queue_depth", connector="m-ok") == 0
    assert value(after, "relay_queue_depth", connector="m-slow") == 1
    assert value(after, "relay_oldest_pending_seconds", connector="m-slow") > 0
    assert value(after, "relay_oldest_pending_seconds", connector="m-ok") == 0
    assert value(after, "relay_dead_deliveries", connector="m-dead") == 1
    assert value(after, "relay_dead_deliveries", connector="m-ok") == 0


async def test_sqs_counters_are_incremented_by_the_sqs_source(
    db_url: str, moto_sqs: MotoSqs
) -> None:
    """The counters docs/deployment.md advertises, moved by the consumer reading a real queue."""
    queue = moto_sqs.queue()
    settings = sqs_settings(
        db_url, {"out": {"type": "log"}}, {"q7m2xk": queue}, extra={"admin": {"token": TOKEN}}
    )
    good = [fixture(name) for name in ("call_completed", "call_live_completed", "presence_user")]
    async with run_relay(settings, dispatch=False) as relay:
        before = await scrape(relay)
        for body in good:
            queue.send(body)
        queue.send(good[0], secret="not-the-aws-secret-key")  # bad signature
        queue.send(b"this is not json")  # signed, but not a Wildix envelope
        total = len(good) + 2
        await consumer_when(relay, lambda s: s["deleted"] == total, "every message deleted")
        after = await scrape(relay)
    assert queue.is_empty()

    def delta(name: str) -> float:
        metric = f"relay_sqs_messages_{name}_total"
        return value(after, metric, integration="q7m2xk") - value(
            before, metric, integration="q7m2xk"
        )

    # on_invalid: delete (the default): the refused messages are deleted too
    assert (delta("received"), delta("rejected"), delta("deleted")) == (total, 2, total)


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """relay's own log configuration, writing to a buffer; pytest's handlers come back after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield io.StringIO()
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


@pytest.mark.parametrize("show", [False, True])
async def test_json_logs_carry_ids_mask_numbers_and_keep_secrets_out(
    tmp_path: Path, captured_logs: io.StringIO, show: bool
) -> None:
    logs.configure("INFO", "json", show_numbers=show, stream=captured_logs)
    settings = admin_settings(f"sqlite+aiosqlite:///{tmp_path}/r.db", {"audit": {"type": "log"}})
    async with run_relay(settings) as relay:
        await relay.post(fixture("call_completed"))
        await relay.post(fixture("call_completed"), secret="wrong")
        await relay.settled()
        await relay.client.get(relay.url + "/api/v1/events", headers={"authorization": "Bearer x"})
        await relay.client.post(relay.url + "/ui/login", data={"token": TOKEN + "x"})
    lines = [json.loads(line) for line in captured_logs.getvalue().splitlines()]
    audit = [r for r in lines if r["logger"] == "relay.connector.audit"]
    assert [r["message"] for r in audit][-1] == "delivered"
    line = next(r for r in audit if "event" in r)  # the log connector's line
    assert line["message"] == "event call:completed"
    assert line["event"]["summary"]["direction"] == "outbound"  # an object, not JSON in a string
    assert (line["integration"], line["connector"]) == ("q7m2xk", "audit")
    assert isinstance(line["event_id"], int) and isinstance(line["delivery_id"], int)
    text = captured_logs.getvalue()
    if show:
        assert "+442071838750" in text
    else:
        assert "442071838750" not in text
        assert line["event"]["summary"]["remote_number"] == "+44********50"
    assert SECRET not in text and TOKEN not in text


def test_json_lines_mask_numbers_in_texts_but_never_ids(captured_logs: io.StringIO) -> None:
    logs.configure("INFO", "json", stream=captured_logs)
    log = logging.getLogger("relay.test")
    log.info(
        "call from +442071838750",
        extra={"event_ids": [12345678, 2071838750], "remote": {"numbers": ["00442071838750"]}},
    )
    try:
        raise ValueError("no route for +442071838750")
    except ValueError:
        log.exception("failed")
    first, second = (json.loads(line) for line in captured_logs.getvalue().splitlines())
    assert first["message"] == "call from +44********50"
    assert first["event_ids"] == [12345678, 2071838750]  # JSON numbers are ids, left alone
    assert first["remote"] == {"numbers": ["004*********50"]}
    assert first["level"] == "INFO" and first["logger"] == "relay.test"
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert "442071838750" not in second["exc_info"] and "ValueError" in second["exc_info"]


def test_text_lines_carry_the_fields_and_uvicorns_colour_copy_is_dropped(
    captured_logs: io.StringIO,
) -> None:
    logs.configure("INFO", "text", stream=captured_logs)
    logging.getLogger("relay.test").info(
        "event %s",
        "call:completed",
        extra={"event": {"to": "+442071838750"}, "color_message": "\x1b[32mevent\x1b[0m"},
    )
    logs.configure("INFO", "json", stream=captured_logs)
    logging.getLogger("uvicorn.error").info("started", extra={"color_message": "\x1b[1mstarted"})
    text, json_line = captured_logs.getvalue().splitlines()
    assert text.endswith('relay.test: event call:completed event={"to":"+44********50"}')
    assert "color_message" not in json.loads(json_line) and "\x1b" not in json_line


def test_masking_leaves_numbers_in_urls_alone() -> None:
    queue = "https://sqs.eu-west-1.amazonaws.com/123456789012/wildix-events"
    assert mask(f"cannot connect to {queue}: refused") == f"cannot connect to {queue}: refused"
    assert mask("from +442071838750 to 00442071838750") == "from +44********50 to 004*********50"
