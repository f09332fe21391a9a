"""Data lifecycle: retention purge (sparing work in flight), `relay erase --phone`, and the
0002 migration indexing the numbers of events stored before it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest
import yaml
from sqlalchemy import insert, select, update

from relay.admin.retention import purge
from relay.store import db
from relay.store.tables import (
    attempts,
    circuit_transitions,
    deliveries,
    event_numbers,
    events,
    incidents,
    links,
    rejections,
    utcnow,
)
from tests.fakes.receiver import Receiver
from tests.support.cli import relay_cli
from tests.support.databases import PG_URL, postgres_database
from tests.support.operations import admin_settings, wait_state, webhook
from tests.support.relay import call_body, config_dict, run_relay
from tests.support.samples import fixture
from tests.support.stores import open_store


async def _backdate(relay: object, table: object, ids: list[int], days: float) -> None:
    when = utcnow() - timedelta(days=days)
    async with relay.store.engine.begin() as conn:  # type: ignore[attr-defined]
        await conn.execute(update(table).where(table.c.id.in_(ids)).values(received_at=when))  # type: ignore[attr-defined]


async def test_retention_purge_spares_pending_work(db_url: str) -> None:
    async with Receiver() as receiver:
        settings = admin_settings(
            db_url,
            {"crm": webhook(receiver)},
            extra={"retention": {"rejections": "7d", "interval": "1h"}},
        )
        settings.integrations["q7m2xk"] = msgspec.structs.replace(
            settings.integrations["q7m2xk"], retention=86400.0
        )
        async with run_relay(settings) as relay:
            done = (await relay.post(call_body("old-done"))).json()["event_id"]
            receiver.respond(400)
            dead = (await relay.post(call_body("old-dead"))).json()["event_id"]
            await relay.settled()
            receiver.respond(503, headers={"retry-after": "3600"})
            waiting = (await relay.post(call_body("old-waiting"))).json()["event_id"]
            [parked] = [d for d in await relay.deliveries() if d.event_id == waiting]
            await receiver.wait_for(3)
            await wait_state(relay, parked.id, "pending")
            fresh = (await relay.post(call_body("fresh"))).json()["event_id"]
            legacy = (await relay.post(fixture("legacy_call_end"), integration="h3p9ta")).json()
            await relay.post(fixture("call_completed"), secret="wrong")
            await relay.post(fixture("call_completed"), secret="wrong")
            old_rejection = min(r.id for r in await relay.rows(rejections))
            await _backdate(relay, events, [done, dead, waiting, legacy["event_id"]], days=2)
            await _backdate(relay, rejections, [old_rejection], days=8)
            doomed = [d.id for d in await relay.deliveries() if d.event_id in (done, dead)]
            assert doomed and await relay.attempts(doomed[0])

        # a restarted service purges at start-up (and every retention.interval after)
        async with run_relay(settings) as relay:

            async def purged() -> bool:  # events first, then rejections: wait for both
                ids = {e.id for e in await relay.events()}
                kept = [r.id for r in await relay.rows(rejections)]
                return ids == {waiting, fresh, legacy["event_id"]} and kept == [old_rejection + 1]

            await relay.wait_until(purged, what="the start-up purge")
            left = await relay.deliveries()
            assert {d.event_id for d in left} == {waiting, fresh, legacy["event_id"]}
            assert [d.state for d in left if d.event_id == waiting] == ["pending"]
            assert await relay.rows(attempts, attempts.c.delivery_id.in_(doomed)) == []
            numbered = await relay.rows(event_numbers, event_numbers.c.event_id.in_([done, dead]))
            assert numbered == []
            assert [r.id for r in await relay.rows(rejections)] == [old_rejection + 1]
            again = await purge(relay.store, settings)
            assert (again.events, again.rejections, again.spared) == (0, 0, 1)


@contextlib.asynccontextmanager
async def _numbers_stored(db_url: str) -> AsyncIterator[tuple[object, dict[str, int]]]:
    receiver = Receiver()
    async with receiver, run_relay(admin_settings(db_url, {"crm": webhook(receiver)})) as relay:
        ids = {}
        for name in ("call_completed", "call_live_progress_start", "sms_status"):
            ids[name] = (await relay.post(fixture(name))).json()["event_id"]
        ids["missed"] = (await relay.post(fixture("call_completed_missed_inbound"))).json()[
            "event_id"
        ]
        await relay.settled()
        await relay.post(fixture("call_completed"), secret="wrong")  # a rejected copy
        await relay.store.set_link("crm", "contact:+442071838750", {"id": "c-1"})
        await relay.store.set_link("crm", "contact:+33142685300", {"id": "c-2"})
        yield relay, ids


async def test_erase_by_phone_removes_what_mentions_the_number(db_url: str, tmp_path: Path) -> None:
    config = tmp_path / "relay.yaml"
    config.write_text(yaml.safe_dump(config_dict(db_url, {"crm": {"type": "log"}})))
    async with _numbers_stored(db_url) as (relay, ids):
        all_deliveries = len(await relay.deliveries())

        dry = await relay_cli(config, "erase", "--phone", "0044 20 7183 8750", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        counts = "2 events (2 deliveries, 2 attempts), 1 rejected request, 1 connector link"
        assert f"would remove {counts}" in dry.stdout
        assert len(await relay.events()) == 4 and len(await relay.rows(rejections)) == 1

        done = await relay_cli(config, "erase", "--phone", "+442071838750")
        assert done.returncode == 0, done.stderr
        assert f"removed {counts}" in done.stdout
        assert f"event {ids['call_completed']}  q7m2xk  call:completed" in done.stdout
        assert f"event {ids['call_live_progress_start']}  q7m2xk  call:live:progress" in done.stdout
        left = {e.id for e in await relay.events()}
        assert left == {ids["sms_status"], ids["missed"]}
        assert len(await relay.deliveries()) == all_deliveries - 2
        assert {d.event_id for d in await relay.deliveries()} == left
        assert await relay.rows(rejections) == []
        assert [r.key for r in await relay.rows(links)] == ["contact:+33142685300"]
        remaining = {r.number for r in await relay.rows(event_numbers)}
        assert "442071838750" not in remaining and "33142685300" in remaining

        # an event whose delivery is being attempted right now is kept, and said so
        async with relay.store.engine.begin() as conn:
            await conn.execute(
                update(deliveries)
                .where(deliveries.c.event_id == ids["missed"])
                .values(state="running")
            )
        busy = await relay_cli(config, "erase", "--phone", "+33142685300")
        assert busy.returncode == 2
        assert f"kept events {ids['missed']}" in busy.stdout
        assert ids["missed"] in {e.id for e in await relay.events()}
        assert await relay.rows(links) == []  # the link went all the same

        bad = await relay_cli(config, "erase", "--phone", "not a number")
        assert bad.returncode == 2 and "not a phone number" in bad.stderr


async def _backfill_check(url: str) -> None:
    engine = db.create_engine(url)
    try:
        await db.migrate(engine, "0001")
        rows = [
            {
                "integration_id": "q7m2xk",
                "type": "call:completed",
                "subject_id": f"s{i}",
                "call_id": f"s{i}",
                "body_sha256": f"{i:064d}",
                "raw": fixture(name),
                "occurred_at": utcnow(),
                "received_at": utcnow(),
                "transport": "webhook",
                "transport_meta": {},
            }
            for i, name in enumerate(["call_completed", "sms_status", "presence_user"])
        ]
        async with engine.begin() as conn:
            await conn.execute(insert(events), rows)
        await db.migrate(engine)
        async with engine.connect() as conn:
            found = set(
                await conn.execute(select(event_numbers.c.event_id, event_numbers.c.number))
            )
        assert found == {(1, "442071838750"), (2, "442030950000"), (2, "447700900123")}
    finally:
        await engine.dispose()


async def test_migration_indexes_numbers_of_events_stored_before_it(tmp_path: Path) -> None:
    await _backfill_check(f"sqlite+aiosqlite:///{tmp_path}/old.db")


@pytest.mark.postgres
@pytest.mark.skipif(not PG_URL, reason="set RELAY_TEST_DATABASE_URL to run against PostgreSQL")
async def test_migration_indexes_numbers_of_events_stored_before_it_postgres() -> None:
    async with postgres_database(migrate=False) as url:
        await _backfill_check(url)


async def test_resolved_incidents_and_circuit_history_go_after_their_retention(
    db_url: str, tmp_path: Path
) -> None:
    """An open incident stays whatever its age; a resolved one and the circuit's history go
    once older than ``retention.incidents``, through `relay purge` as through the service."""
    old = utcnow() - timedelta(days=91)
    async with open_store(db_url) as store:
        for subject in ("open-old", "gone", "recent"):
            await store.report_incident("circuit_open", subject, "circuit open")
        for subject in ("gone", "recent"):
            await store.report_incident("circuit_open", subject, None)
        async with store.engine.begin() as conn:
            await conn.execute(
                update(incidents).where(incidents.c.subject == "open-old").values(opened_at=old)
            )
            await conn.execute(
                update(incidents)
                .where(incidents.c.subject == "gone")
                .values(opened_at=old, resolved_at=old)
            )
            await conn.execute(
                insert(circuit_transitions),
                [
                    {"connector": "crm", "at": at, "from_state": "closed", "to_state": "open"}
                    for at in (old, utcnow())
                ],
            )
    config = tmp_path / "relay.yaml"
    config.write_text(yaml.safe_dump(config_dict(db_url, {"crm": {"type": "log"}})))
    result = await relay_cli(config, "purge")
    assert result.returncode == 0, result.stderr
    assert "1 resolved incident and 1 circuit transition" in result.stdout
    async with open_store(db_url) as store, store.engine.connect() as conn:
        kept = set(await conn.scalars(select(incidents.c.subject)))
        history = list(await conn.scalars(select(circuit_transitions.c.at)))
    assert kept == {"open-old", "recent"}
    assert len(history) == 1
