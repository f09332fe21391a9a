"""The SQS source as users run it: `relay serve`, `relay worker --sqs` and `relay send-test --sqs`
as real processes against moto's SQS server; crashes are real SIGKILLs."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import yaml
from click.testing import CliRunner, Result
from sqlalchemy import select

from relay.cli import main
from relay.store import db
from relay.store.tables import deliveries, events
from tests.fakes.sqs import SECRET_KEY, MotoSqs, Queue, SqsProxy
from tests.support.cli import RELAY, free_port, run, write
from tests.support.relay import run_relay
from tests.support.samples import fixture
from tests.support.sqs import consumer_when, sqs_settings, until
from tests.support.waiting import eventually


def sqs_config(tmp_path: Path, db_url: str, queue: Queue, **sqs: Any) -> dict[str, Any]:
    return {
        "database": {"url": db_url},
        "server": {"host": "127.0.0.1", "port": free_port()},
        "dispatch": {"poll_interval": "0.1s", "shutdown_grace": "5s"},
        "connectors": {
            "demo-log": {"type": "log"},
            "demo-file": {"type": "file", "path": str(tmp_path / "events.jsonl")},
        },
        "integrations": {
            "q7m2xk": {
                "transport": "sqs",
                "sqs": queue.config(**sqs),
                "routes": [
                    {"connector": "demo-log", "events": ["*"]},
                    {"connector": "demo-file", "events": ["call:*"]},
                ],
            }
        },
    }


def start(config: Path, *args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [*RELAY, "--config", str(config), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def logged(log: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]


def consuming(log: Path) -> bool:
    return any(x.get("message") == "sqs consumer started" for x in logged(log))


def stopped_status(log: Path) -> dict[str, Any]:
    [status] = [x for x in logged(log) if x.get("message") == "sqs consumer stopped"]
    return status


@contextlib.contextmanager
def serving(config: Path, tmp_path: Path, *args: str) -> Iterator[tuple[int, Path]]:
    """`relay serve` until its SQS consumer is running; SIGTERM afterwards."""
    port = yaml.safe_load(config.read_text())["server"]["port"]
    log = tmp_path / f"serve-{port}.log"
    proc = start(config, "serve", *args, log=log)
    deadline = time.monotonic() + 30
    while True:
        try:
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
            if ready.json().get("sqs", {}).get("q7m2xk", {}).get("state") == "running":
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError(f"relay serve did not start consuming:\n{log.read_text()}")
        time.sleep(0.1)
    try:
        yield port, log
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_send_test_sqs_queues_signed_fixtures_that_serve_consumes(
    tmp_path: Path, moto_sqs: MotoSqs
) -> None:
    queue = moto_sqs.queue()
    data = sqs_config(tmp_path, f"sqlite+aiosqlite:///{tmp_path}/relay.db", queue)
    config = write(tmp_path / "relay.yaml", data)
    with serving(config, tmp_path) as (port, log):
        sent = run(
            "send-test",
            "q7m2xk",
            "--sqs",
            "--fixture",
            "call_completed_missed_inbound",
            config=config,
        )
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.startswith(f"SQS {queue.url} → MessageId ")
        for _ in range(2):  # the fixture's exact bytes twice: one event
            exact = cli("send-test", "q7m2xk", "--sqs", "--exact", config=config)
            assert exact.exit_code == 0, exact.output

        def status() -> dict[str, Any]:
            return httpx.get(f"http://127.0.0.1:{port}/readyz").json()["sqs"]["q7m2xk"]

        deadline = time.monotonic() + 20
        while status()["deleted"] < 3 or not (tmp_path / "events.jsonl").exists():
            assert time.monotonic() < deadline, status()
            time.sleep(0.1)
        final = status()
        assert (final["stored"], final["duplicates"], final["rejected"]) == (2, 1, 0)
        assert queue.is_empty()
        lines = (tmp_path / "events.jsonl").read_text().splitlines()
        first = json.loads(lines[0])
        assert first["view"]["call"]["status"] == "missed"
        assert first["integration_id"] == "q7m2xk"

        webhook = cli("send-test", "q7m2xk", config=config)
        assert webhook.exit_code == 1 and "uses SQS: add --sqs" in webhook.output

        missing = copy.deepcopy(data)
        missing["integrations"]["q7m2xk"]["sqs"]["queue_url"] = queue.url + "-gone"
        bad = cli("send-test", "q7m2xk", "--sqs", config=write(tmp_path / "gone.yaml", missing))
        assert bad.exit_code == 1
        assert "could not send to" in bad.output and "NonExistentQueue" in bad.output
        assert SECRET_KEY not in sent.stdout + sent.stderr
        for result in (exact, webhook, bad):
            assert SECRET_KEY not in result.output
    assert SECRET_KEY not in log.read_text()
    assert stopped_status(log)["deleted"] == 3


def cli(*args: str, config: Path) -> Result:
    """The same command in this process (cheaper than a subprocess for the quick cases)."""
    return CliRunner().invoke(main, ["--config", str(config), *args])


@contextlib.asynccontextmanager
async def engine_for(url: str) -> AsyncIterator[Any]:
    engine = db.create_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def count(engine: Any, table: Any) -> int:
    async with engine.connect() as conn:
        return len((await conn.execute(select(table.c.id))).all())


async def test_a_worker_killed_between_commit_and_delete_leaves_a_redelivery_that_dedupe_absorbs(
    tmp_path: Path, db_url: str, moto_sqs: MotoSqs
) -> None:
    queue = moto_sqs.queue()
    async with SqsProxy(moto_sqs.endpoint) as proxy, engine_for(db_url) as engine:
        proxy.hold_deletes()
        data = sqs_config(tmp_path, db_url, queue, endpoint_url=proxy.url)
        config = write(tmp_path / "relay.yaml", data)
        proc = start(config, "worker", "--sqs", log=tmp_path / "worker.log")
        try:
            queue.send(fixture("call_completed"))
            await eventually(lambda: proxy.held == 1, "the worker's delete")
            assert await count(engine, events) == 1  # committed; the delete is still on the wire
            routed = await count(engine, deliveries)
            assert routed == 2  # demo-log and demo-file
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        assert sum(queue.counts()) == 1  # the message is still in the queue

        settings = sqs_settings(db_url, {"demo-log": {"type": "log"}}, {"q7m2xk": queue})
        async with run_relay(settings) as relay:
            await until(relay, queue.is_empty, "the redelivery to be deleted")
            status = await consumer_when(relay, lambda s: s["deleted"] == 1, "the delete")
            assert (status["stored"], status["duplicates"]) == (0, 1)
            assert await count(engine, events) == 1
            assert len(await relay.deliveries()) == routed


async def test_two_processes_on_postgresql_store_every_message_once(
    tmp_path: Path, pg_url: str, moto_sqs: MotoSqs
) -> None:
    queue = moto_sqs.queue()
    data = sqs_config(tmp_path, pg_url, queue, max_messages=2)
    data["connectors"] = {"demo-log": {"type": "log"}}
    data["integrations"]["q7m2xk"]["routes"] = [{"connector": "demo-log"}]
    config = write(tmp_path / "relay.yaml", data)
    worker_log = tmp_path / "worker.log"
    worker = start(config, "worker", "--sqs", log=worker_log)
    try:
        with serving(config, tmp_path, "--no-dispatch") as (_port, serve_log):
            await eventually(lambda: consuming(worker_log), "the worker to consume")
            template = msgspec.json.decode(fixture("call_completed"))
            bodies = [
                msgspec.json.encode(template | {"time": 1764412300000 + i}) for i in range(30)
            ]
            for i in range(0, len(bodies), 5):  # every body twice, as redeliveries would be
                queue.send_many(bodies[i : i + 5] * 2)
            async with engine_for(pg_url) as engine:

                async def drained() -> bool:
                    return queue.is_empty() and await count(engine, events) == len(bodies)

                deadline = time.monotonic() + 60
                while not await drained():
                    assert time.monotonic() < deadline, (
                        queue.counts(),
                        await count(engine, events),
                    )
                    await asyncio.sleep(0.1)
                async with engine.connect() as conn:
                    raws = [bytes(r.raw) for r in await conn.execute(select(events.c.raw))]
                assert sorted(raws) == sorted(bodies)
                assert await count(engine, deliveries) == len(bodies)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    statuses = [stopped_status(serve_log), stopped_status(worker_log)]
    assert sum(s["stored"] for s in statuses) == len(bodies)
    assert sum(s["stored"] + s["duplicates"] for s in statuses) >= 2 * len(bodies)
    assert all(s["received"] > 0 for s in statuses), statuses  # both really consumed
