"""Coalescing per call, on SQLite and PostgreSQL: for a connector that declares only a call's
newest state matters (``coalesce_calls``), pending deliveries that a newer pending state of the
same call makes pointless are marked ``superseded`` and the newest is sent once; a final record
is never superseded by a live event; other connectors still get every event, in order; a
superseded delivery can be retried by hand; after an outage a CRM gets one create per call."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from sqlalchemy import select

from relay.admin import actions
from relay.store import db
from relay.store.queue import Claim, Outcome
from relay.store.records import Store
from relay.store.rows import Incoming
from relay.store.states import DeliveryState, OutcomeKind
from relay.store.tables import deliveries
from relay.wildix import parse
from tests.fakes.receiver import Receiver
from tests.support.calls import current_outbound, legacy
from tests.support.cli import relay_cli
from tests.support.crm import HUBSPOT, UK_CONTACT, day, post_all, running
from tests.support.dashboard import ui_login
from tests.support.operations import admin_settings, api, webhook
from tests.support.relay import config_dict, make_settings, run_relay

LEASE = 30.0


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    engine = db.create_engine(db_url)
    if db.is_sqlite(db_url):  # the PostgreSQL fixture database is migrated already
        await db.migrate(engine)
    store = Store(engine)
    yield store
    await store.close()


def call(call_id: str = "it_c1") -> dict[str, bytes]:
    """The fixtures' call by phase: start, update, end (live), record (final)."""
    return dict(current_outbound(call_id, UK_CONTACT))


def progress(body: bytes, later_ms: int, talk: int) -> bytes:
    """Another ``call:live:progress`` of the same call, ``later_ms`` after ``body``."""
    data = msgspec.json.decode(body)
    data["time"] += later_ms
    data["data"]["flows"][0]["talkTime"] = talk
    return msgspec.json.encode(data)


async def record(store: Store, *bodies: bytes) -> list[int]:
    """Store the events in this order (arrival order), routed to connector ``out``."""
    await store.record_batch([Incoming(parse(b), ["out"], "test") for b in bodies])
    return [row.id for row in await states(store)]


async def states(store: Store) -> list[Any]:
    async with store.engine.connect() as conn:
        rows = await conn.execute(select(deliveries).order_by(deliveries.c.id))
        return list(rows.all())


async def held(store: Store, delivery_id: int) -> Claim:
    """The claim this worker holds on ``delivery_id``, as the dispatcher keeps it."""
    [row] = [r for r in await states(store) if r.id == delivery_id]
    assert row.state == "running"
    return Claim(row.id, row.event_id, row.connector, row.integration_id, row.attempts, b"")


def succeeded() -> Outcome:
    return Outcome(DeliveryState.SUCCEEDED, OutcomeKind.SUCCEEDED, datetime.now(UTC), 12)


async def claim(store: Store, coalesce: bool = True, limit: int = 10) -> list[int]:
    got = await store.claim("out", limit, worker="w", lease=LEASE, coalesce=coalesce)
    return [c.delivery_id for c in got]


async def test_a_burst_of_live_progress_is_sent_once_with_the_newest_state(store: Store) -> None:
    phases = call()
    burst = [progress(phases["update"], ms, talk) for ms, talk in ((1000, 1), (2000, 2), (3000, 3))]
    ids = await record(store, phases["start"], phases["update"], *burst)
    assert await claim(store) == [ids[-1]]  # one delivery: the newest snapshot
    rows = await states(store)
    assert [r.state for r in rows] == ["superseded"] * 4 + ["running"]
    assert all(r.completed_at is not None and r.attempts == 0 for r in rows[:4])
    assert await claim(store) == []  # nothing else of this call is left to send


async def test_the_final_record_supersedes_every_live_event_whatever_their_order(
    store: Store,
) -> None:
    phases = call()
    late = progress(phases["update"], 600_000, 99)  # a live update sent after the final record
    ids = await record(store, phases["start"], phases["record"], late, phases["end"])
    assert await claim(store) == [ids[1]]
    assert [r.state for r in await states(store)] == [
        "superseded",
        "running",
        "superseded",
        "superseded",
    ]


async def test_the_final_record_is_never_superseded_by_the_live_end(store: Store) -> None:
    """Wildix may send the final record before the live end: the record is sent, and the live
    end (no numbers, no outcome: nothing the record lacks) is the one left out."""
    phases = call()
    ids = await record(store, phases["record"], phases["end"])
    assert await claim(store) == [ids[0]]
    assert [r.state for r in await states(store)] == ["running", "superseded"]
    await store.finish(await held(store, ids[0]), succeeded(), worker="w")
    assert [r.state for r in await states(store)] == ["succeeded", "superseded"]


async def test_the_live_end_waits_for_a_final_record_being_sent(store: Store) -> None:
    """A live end that arrives while the final record is already out is no newer state: it is
    sent after it, and the connector's merge keeps the record's data."""
    phases = call()
    [first] = await record(store, phases["record"])
    assert await claim(store) == [first]
    ids = await record(store, phases["end"])
    assert await claim(store) == []  # held back by the record's running delivery
    await store.finish(await held(store, first), succeeded(), worker="w")
    assert await claim(store) == [ids[1]]
    assert [r.state for r in await states(store)] == ["succeeded", "running"]


async def test_legacy_events_are_all_sent(store: Store) -> None:
    """The legacy generation carries no times: its first event's time is the call's start, so
    none of its events may be left out."""
    ids = await record(store, *(body for _, body in legacy("it_leg", UK_CONTACT)))
    sent = []
    for _ in ids:
        [got] = await claim(store)
        sent.append(got)
        await store.finish(await held(store, got), succeeded(), worker="w")
    assert sent == ids
    assert {r.state for r in await states(store)} == {"succeeded"}


async def test_a_connector_that_does_not_coalesce_gets_every_event_in_order(store: Store) -> None:
    phases = call()
    ids = await record(store, *phases.values())
    sent = []
    for _ in ids:
        [got] = await claim(store, coalesce=False)
        sent.append(got)
        await store.finish(await held(store, got), succeeded(), worker="w")
    assert sent == ids
    assert {r.state for r in await states(store)} == {"succeeded"}


async def test_a_superseded_delivery_can_be_retried_by_hand(store: Store) -> None:
    phases = call()
    ids = await record(store, phases["update"], phases["record"])
    assert await claim(store) == [ids[1]]
    await store.finish(await held(store, ids[1]), succeeded(), worker="w")
    await actions.retry(store, ids[0], by="test")
    assert [r.state for r in await states(store)] == ["pending", "succeeded"]
    assert await claim(store) == [ids[0]]  # nothing newer is pending: it is sent as it is


async def test_webhook_gets_every_event_of_a_call_in_order_after_a_backlog(db_url: str) -> None:
    phases = call("it_hook")
    async with Receiver() as rx:
        settings = make_settings(db_url, {"hook": webhook(rx)})
        async with run_relay(settings, dispatch=False) as relay:  # the dispatcher is down
            await post_all(relay, list(phases.items()), "q7m2xk")
        async with run_relay(settings) as relay:
            rows = await relay.settled()
            got = await rx.wait_for(4)
    assert [r.state for r in rows] == ["succeeded"] * 4
    assert [msgspec.json.decode(r.body)["type"] for r in got] == [
        parse(body).type for body in phases.values()
    ]


async def test_after_an_outage_a_crm_gets_one_create_per_call(db_url: str) -> None:
    fake = HUBSPOT.fake()
    seeded = HUBSPOT.seed(fake)
    calls = day(4)
    async with running(fake) as url:
        settings = make_settings(db_url, {"crm": HUBSPOT.block(fake, url)})
        async with run_relay(settings, dispatch=False) as relay:  # relay's dispatcher was down
            await post_all(relay, calls, "q7m2xk")
        async with run_relay(settings) as relay:
            rows = await relay.settled(timeout=60)
            tries = [a for r in rows for a in await relay.attempts(r.id)]
    superseded = len(calls) - 4  # every live event: each call's final record came in the backlog
    assert sorted(r.state for r in rows) == ["succeeded"] * 4 + ["superseded"] * superseded
    assert len(tries) == 4  # one attempt per call: its final record
    creates = [e for e in fake.log if e[0] == "POST" and e[1].endswith(HUBSPOT.create_path)]
    assert len(creates) == 4
    for i in range(4):
        [rec] = HUBSPOT.records(fake, f"day_{i}")
        outcome = "missed" if i % 2 else "completed"
        assert HUBSPOT.outcome(rec) == HUBSPOT.outcomes[outcome]
        assert HUBSPOT.person(rec) == (seeded["fr"] if i % 2 else seeded["uk"])


async def test_superseded_shows_in_the_charts_filters_and_cli_never_as_dead(
    db_url: str, tmp_path: Path
) -> None:
    phases = call("it_shown")
    connectors = {"crm": {"type": "log"}}
    settings = admin_settings(db_url, connectors, admin={"secure_cookies": False})
    config = tmp_path / "relay.yaml"
    config.write_text(yaml.safe_dump(config_dict(db_url, connectors)))
    async with run_relay(settings, dispatch=False) as relay:
        for body in phases.values():
            await relay.post(body)
        # what the dispatcher's claim does for a connector that coalesces
        [sent] = await relay.store.claim("crm", 10, worker="w", lease=LEASE, coalesce=True)
        rows = await relay.deliveries()
        left_out = sorted(r.id for r in rows if r.id != sent.delivery_id)
        assert sorted(r.id for r in rows if r.state == "superseded") == left_out
        await ui_login(relay)
        page = (await relay.client.get(relay.url + "/ui/")).text
        chart = re.search(r'id="attempts-chart-crm">(.*?)</td>', page, re.S)
        assert chart is not None
        titles = re.findall(r'<rect class="bar superseded"[^>]*><title>([^<]*)</title>', chart[1])
        assert [t.split(": ")[1] for t in titles] == ["3 superseded"]
        assert 'class="bar dead"' not in chart[1]
        listed = await api(relay, "GET", "/deliveries", params={"state": "superseded"})
        assert sorted(d["id"] for d in listed["items"]) == left_out
        dead = await api(relay, "GET", "/deliveries", params={"state": "dead"})
        assert dead["items"] == []
        ui = (await relay.client.get(relay.url + "/ui/deliveries?state=superseded")).text
        assert all(f"delivery-{i}" in ui for i in left_out)
    cli = await relay_cli(config, "deliveries", "list", "--state", "superseded", "--json")
    assert cli.returncode == 0, cli.stderr
    assert sorted(d["id"] for d in json.loads(cli.stdout)["items"]) == left_out
