"""What the store cannot hold: the same answer on SQLite and PostgreSQL, decided before the batch
or isolated inside it, so one bad event never costs its neighbours their acknowledgement."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from sqlalchemy import select

from relay.store.rows import Incoming, RowRefused
from relay.store.tables import events, rejections
from relay.wildix import parse
from relay.wildix.envelope import MAX_ID, MAX_INTEGRATION_ID, MAX_TYPE
from tests.fakes.sqs import MotoSqs
from tests.support.relay import call_body, make_settings, run_relay
from tests.support.sqs import consumer_when, sqs_settings, until
from tests.support.stores import open_store, refuse_type

REFUSED = "test:refused"  # the event type a constraint refuses (tests.support.stores)


def edited(call_id: str, **changes: Any) -> bytes:
    """A signed-ready call event with envelope fields (``id``, ``type``) or ``data.<key>`` set."""
    body = msgspec.json.decode(call_body(call_id))
    for key, value in changes.items():
        if key.startswith("data_"):
            body["data"][key.removeprefix("data_")] = value
        else:
            body[key] = value
    return msgspec.json.encode(body)


def nul_bodies() -> list[bytes]:
    """A NUL where the store keeps a column of its own (the subject id, the type, the call id)
    and where it keeps only the raw body (a caller-ID name an outside caller chose)."""
    caller_name = msgspec.json.decode(call_body("nul-name"))
    caller_name["data"]["flows"][0]["callee"]["name"] = "Mallory\x00<!channel>"
    return [
        msgspec.json.encode(caller_name),
        edited("nul\x00id"),  # envelope id and data.id: subject id and call id
        edited("nul-type", type="call:completed\x00"),
        edited("nul-call", data_id="call\x00id"),  # the call id alone
    ]


def without_nul(value: str | None) -> str | None:
    return value.replace("\x00", "\ufffd") if value is not None else None


async def test_nul_events_are_stored_and_delivered_and_never_fail_their_neighbours(
    db_url: str,
) -> None:
    """On PostgreSQL a NUL failed its whole batch (neighbours 503, itself 503 forever); on
    SQLite it was 200. Now it is 200 on both, the body byte-exact, its columns NUL-free."""
    settings = make_settings(db_url, {"log": {"type": "log"}})
    async with run_relay(settings) as relay:
        good = [call_body(f"good-{n}") for n in range(80)]
        bad = nul_bodies()
        bodies = good[:40] + bad + good[40:]
        responses = await asyncio.gather(*(relay.post(b) for b in bodies))
        assert [r.status_code for r in responses] == [200] * len(bodies), [
            r.text for r in responses if r.status_code != 200
        ]
        rows = {bytes(row.raw): row for row in await relay.events()}
        assert set(rows) == set(bodies)  # every body stored, byte for byte
        for body in bad:
            row, envelope = rows[body], msgspec.json.decode(body)
            assert row.subject_id == without_nul(envelope["id"])
            assert row.type == without_nul(envelope["type"])
            assert row.call_id == without_nul(envelope["data"]["id"])
            assert "\x00" not in row.subject_id + row.type + row.call_id
        settled = await relay.settled(timeout=30)
        assert len(settled) == len(bodies)
        assert {d.state for d in settled} == {"succeeded"}  # delivered from the raw body


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"type": "call:" + "x" * (MAX_TYPE - 4)}, "field 'type' is longer than 100 characters"),
        ({"id": "c" * (MAX_ID + 1)}, "field 'id' is longer than 255 characters"),
    ],
    ids=["type", "id"],
)
async def test_values_longer_than_their_columns_are_400_and_nothing_is_stored(
    db_url: str, changes: dict[str, str], message: str
) -> None:
    """PostgreSQL cut them silently and answered 200 (SQLite kept them whole): now a 400
    naming the field and the limit on both, and a value at the limit is kept whole."""
    settings = make_settings(db_url, {"log": {"type": "log"}})
    async with run_relay(settings, dispatch=False) as relay:
        r = await relay.post(edited("too-long", **changes))
        assert r.status_code == 400, r.text
        assert message in r.json()["error"]
        assert await relay.events() == [] and await relay.deliveries() == []

        longest = edited("c" * MAX_ID, type="call:" + "x" * (MAX_TYPE - 5))
        r = await relay.post(longest)
        assert r.status_code == 200, r.text
        [row] = await relay.events()
        assert (row.subject_id, row.call_id) == ("c" * MAX_ID, "c" * MAX_ID)
        assert row.type == "call:" + "x" * (MAX_TYPE - 5)


async def test_a_call_id_in_data_longer_than_its_column_is_no_call_id(db_url: str) -> None:
    """Junk below the envelope never fails an event: the envelope's id stands in, whole, on
    both databases (PostgreSQL cut the long one, SQLite kept it)."""
    settings = make_settings(db_url, {"log": {"type": "log"}})
    async with run_relay(settings, dispatch=False) as relay:
        body = edited("envelope-id", data_id="c" * (MAX_ID + 1))
        r = await relay.post(body)
        assert r.status_code == 200, r.text
        [row] = await relay.events()
        assert bytes(row.raw) == body
        assert (row.subject_id, row.call_id) == ("envelope-id", "envelope-id")
        [delivery] = await relay.deliveries()
        assert delivery.ordering_key == "log|q7m2xk|envelope-id"


def test_the_envelope_limits_are_the_columns_widths() -> None:
    for limit, column in (
        (MAX_ID, events.c.subject_id),
        (MAX_ID, events.c.call_id),
        (MAX_TYPE, events.c.type),
        (MAX_INTEGRATION_ID, events.c.integration_id),
    ):
        assert column.type.length == limit, column


async def test_a_row_the_database_refuses_fails_alone_and_its_batch_commits(db_url: str) -> None:
    """A real constraint violation inside a batch used to fail every event of that batch (503):
    now the others are retried without it and acknowledged, and it is not stored."""
    settings = make_settings(db_url, {"log": {"type": "log"}})
    async with run_relay(settings, dispatch=False) as relay:
        await refuse_type(relay.store, REFUSED)
        good = [call_body(f"good-{n}") for n in range(80)]
        bad = [edited(f"bad-{n}", type=REFUSED) for n in range(3)]
        bodies = good[:20] + bad[:1] + good[20:50] + bad[1:] + good[50:]
        responses = dict(zip(bodies, await asyncio.gather(*map(relay.post, bodies)), strict=True))
        assert [responses[b].status_code for b in good] == [200] * len(good)
        assert all(responses[b].status_code != 200 for b in bad)
        assert {bytes(row.raw) for row in await relay.events()} == set(good)
        assert len(await relay.deliveries()) == len(good)


@pytest.mark.xfail(
    strict=True,
    reason="needs relay/ingest/webhook_endpoint.py to answer RowRefused with a 400 (see the "
    "batches branch's report); until then the refused event is 503",
)
async def test_a_row_the_database_refuses_is_a_recorded_400(db_url: str) -> None:
    settings = make_settings(db_url, {"log": {"type": "log"}})
    async with run_relay(settings, dispatch=False) as relay:
        await refuse_type(relay.store, REFUSED)
        body = edited("bad", type=REFUSED)
        r = await relay.post(body)
        assert r.status_code == 400, r.text
        assert r.json()["error"].startswith("the store cannot hold this event")
        [row] = await relay.rows(rejections)
        assert bytes(row.body_excerpt) == body and row.status_code == 400


async def test_sqs_stores_nul_events_beside_their_neighbours(
    db_url: str, moto_sqs: MotoSqs
) -> None:
    """On PostgreSQL a NUL failed its whole receive batch, returned to the queue forever."""
    queue = moto_sqs.queue()
    settings = sqs_settings(db_url, {"log": {"type": "log"}}, {"q7m2xk": queue})
    async with run_relay(settings, dispatch=False) as relay:
        bodies = [call_body(f"good-{n}") for n in range(6)] + nul_bodies()
        queue.send_many(bodies)  # visible together
        await until(relay, queue.is_empty, "every message deleted")
        assert {bytes(row.raw) for row in await relay.events()} == set(bodies)
        status = await consumer_when(relay, lambda s: s["deleted"] == len(bodies), "the deletes")
        assert (status["stored"], status["rejected"], status["state"]) == (
            len(bodies),
            0,
            "running",
        )


async def test_sqs_treats_a_row_the_database_refuses_as_invalid_and_commits_the_rest(
    db_url: str, moto_sqs: MotoSqs
) -> None:
    """It used to fail its batch: nothing deleted, the consumer backing off, forever."""
    queue = moto_sqs.queue()
    settings = sqs_settings(db_url, {"log": {"type": "log"}}, {"q7m2xk": queue})
    async with run_relay(settings, dispatch=False) as relay:
        await refuse_type(relay.store, REFUSED)
        good = [call_body(f"good-{n}") for n in range(8)]
        bad = edited("bad", type=REFUSED)
        queue.send_many([*good[:4], bad, *good[4:]])
        await until(relay, queue.is_empty, "every message deleted (on_invalid: delete)")
        assert {bytes(row.raw) for row in await relay.events()} == set(good)
        [rejected] = await relay.rows(rejections)
        assert bytes(rejected.body_excerpt) == bad
        assert rejected.reason.startswith("the store cannot hold this event")
        status = await consumer_when(relay, lambda s: s["deleted"] == 9, "the deletes")
        assert (status["stored"], status["rejected"], status["state"]) == (8, 1, "running")


@pytest.mark.postgres
async def test_postgres_refuses_a_value_longer_than_its_column_instead_of_cutting_it(
    pg_url: str,
) -> None:
    """Below the envelope's checks, the store itself never cuts a value (the ingest statement
    cast every text to its column's width, which cuts): it refuses that one row."""
    async with open_store(pg_url) as store:
        event = parse(call_body("long"))
        long_type = msgspec.structs.replace(event, type="call:" + "x" * MAX_TYPE)
        with pytest.raises(RowRefused, match="too long"):
            await store.record_batch([Incoming(long_type, ["log"], "webhook")])
        [recorded] = await store.record_batch([Incoming(event, ["log"], "webhook")])
        assert not recorded.duplicate
        async with store.engine.connect() as conn:
            assert (await conn.execute(select(events.c.type))).scalars().all() == [event.type]
