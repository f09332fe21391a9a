"""relay.runtime: the parts each kind of process gets, and the one order they stop in — shown on a
real SQLite (or PostgreSQL) store, the `file` connector and moto's SQS server."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from sqlalchemy import select

from relay.config import Settings, parse_config
from relay.registry import connector_types
from relay.runtime import running
from relay.store import db
from relay.store.records import Store
from relay.store.tables import deliveries, events
from relay.wildix import parse
from tests.fakes.sqs import MotoSqs, Queue, SqsProxy
from tests.support.databases import postgres_database
from tests.support.relay import config_dict
from tests.support.samples import fixture
from tests.support.waiting import eventually

T = TypeVar("T")


def settings_with_queue(
    db_url: str, tmp_path: Path, queue: Queue, *, endpoint: str | None = None
) -> Settings:
    """Webhook integration q7m2xk and SQS integration h3p9ta, both routed to the file connector."""
    out = {"type": "file", "path": str(tmp_path / "events.jsonl")}
    data = config_dict(db_url, {"out": out}, extra={"dispatch": {"shutdown_grace": "20s"}})
    data["integrations"]["h3p9ta"] = {
        "transport": "sqs",
        "sqs": queue.config(endpoint),
        "routes": [{"connector": "out", "events": ["*"]}],
    }
    return parse_config(yaml.safe_dump(data), connector_types=connector_types(), env={})


def written(tmp_path: Path) -> dict[int, dict[str, Any]]:
    """The file connector's lines, by event id."""
    path = tmp_path / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return {(row := json.loads(line))["event_id"]: row for line in lines}


async def stored_events(store: Store) -> list[Any]:
    async with store.engine.connect() as conn:
        return list((await conn.execute(select(events))).all())


async def test_shutdown_stops_taking_input_first_and_closes_the_store_last(
    db_url: str, tmp_path: Path, moto_sqs: MotoSqs, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    queue = moto_sqs.queue()
    async with SqsProxy(moto_sqs.endpoint) as proxy:
        settings = settings_with_queue(db_url, tmp_path, queue, endpoint=proxy.url)
        runtime = running(settings, role="serve")
        rt = await runtime.__aenter__()
        stopping: asyncio.Task[Any] | None = None
        try:
            assert rt.sqs is not None and rt.ingest is not None and rt.dispatcher is not None
            proxy.hold_deletes()
            queue.send(fixture("legacy_call_end"))

            async def delete_under_way() -> bool:
                return proxy.held == 1

            await eventually(delete_under_way, "the SQS batch committed, its delete in flight")
            stopping = asyncio.create_task(runtime.__aexit__(None, None, None))

            async def consumer_stopping() -> bool:
                return any(r.getMessage() == "sqs consumer stopping" for r in caplog.records)

            await eventually(consumer_stopping, "the consumer to be told to stop")
            # Step 1 is under way, and every later step waits for it: an event accepted now is
            # stored, and the dispatcher and the connector still deliver it.
            accepted = await rt.ingest.accept(parse(fixture("call_completed")), transport="webhook")
            assert not accepted.duplicate

            async def both_delivered() -> bool:
                return {accepted.event_id, *sqs_stored} <= set(written(tmp_path))

            sqs_stored = {
                e.id for e in await stored_events(rt.store) if e.integration_id != "q7m2xk"
            }
            assert len(sqs_stored) == 1
            await eventually(both_delivered, "both events delivered while the consumer stops")
            assert not stopping.done()  # the consumer's in-flight batch holds shutdown up
            proxy.release_deletes()
            await stopping
        finally:
            proxy.release_deletes()
            if stopping is None:
                await runtime.__aexit__(None, None, None)

    assert queue.is_empty()  # the in-flight batch was deleted before the SQS client went
    status = rt.sqs.snapshot()["h3p9ta"]
    assert (status["state"], status["stored"], status["deleted"]) == ("stopped", 1, 1)
    # Nothing failed on the way down: no part was used after the one it needs had closed.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text

    store = Store(db.create_engine(db_url))  # the runtime's own store is closed: open another
    try:
        stored = await stored_events(store)
        async with store.engine.connect() as conn:
            rows = (await conn.execute(select(deliveries))).all()
    finally:
        await store.close()
    assert {e.integration_id for e in stored} == {"q7m2xk", "h3p9ta"}
    by_event = {d.event_id: d for d in rows}
    assert set(by_event) == {e.id for e in stored}  # every stored event kept its delivery
    # every event stored before the store closed, none lost, each delivered and written once
    assert [d.state for d in by_event.values()] == ["succeeded", "succeeded"]
    assert set(written(tmp_path)) == set(by_event)


PARTS = ("http", "connectors", "dispatcher", "ingest", "sqs")


@pytest.mark.parametrize(
    ("role", "options", "parts"),
    [
        ("serve", {}, {"http", "connectors", "dispatcher", "ingest", "sqs"}),
        ("serve", {"dispatch": False, "sqs": False}, {"http", "connectors", "ingest"}),
        ("worker", {}, {"http", "connectors", "dispatcher"}),
        ("worker", {"sqs": True}, {"http", "connectors", "dispatcher", "ingest", "sqs"}),
        ("cli", {}, set()),
        ("cli", {"connectors": True}, {"http", "connectors"}),
    ],
)
async def test_each_role_gets_its_parts_and_a_migrated_sqlite_store(
    tmp_path: Path, moto_sqs: MotoSqs, role: Any, options: dict[str, Any], parts: set[str]
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/relay.db"
    settings = settings_with_queue(url, tmp_path, moto_sqs.queue())
    async with running(settings, role=role, **options) as rt:
        assert {p for p in PARTS if getattr(rt, p) is not None} == parts
        assert await db.current_revision(rt.store.engine) == db.head_revision()  # auto-migrated
        if rt.sqs is not None:
            assert len(rt.sqs) == 1


async def test_a_postgres_store_behind_its_schema_is_refused_not_migrated(tmp_path: Path) -> None:
    if not os.environ.get("RELAY_TEST_DATABASE_URL"):
        pytest.skip("set RELAY_TEST_DATABASE_URL to run against PostgreSQL")
    async with postgres_database(migrate=False) as url:
        settings = parse_config(
            yaml.safe_dump(config_dict(url, {"out": {"type": "log"}})),
            connector_types=connector_types(),
            env={},
        )
        for role in ("cli", "worker", "serve"):
            with pytest.raises(db.SchemaOutOfDate, match="relay migrate"):
                async with running(settings, role=role):
                    pass
        engine = db.create_engine(url)
        try:
            assert await db.current_revision(engine) is None  # nothing was created
        finally:
            await engine.dispose()
