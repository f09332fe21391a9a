"""Scaling out on one PostgreSQL: does a second and a third process add throughput?

1. workers → sink: 1, 2 and 3 `relay worker` processes drain a backlog of N deliveries to the
   local sink (bench.sink); deliveries/s for each.
2. workers → a rate-limited CRM: the same 1, 2, 3 workers drain a backlog of call records to the
   Pipedrive fake, which answers 429 past its limit; the aggregate requests/s and the busiest
   window the fake saw, against the limit relay was given.
3. ingest: one `relay serve --no-dispatch` vs two sharing one port (`server.reuse_port`), under
   wrk; events/s accepted.

    .venv/bin/python -m bench.scale [--deliveries 20000] [--calls 300] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from bench.common import (
    FIXTURE,
    database,
    free_port,
    machine,
    make_bodies,
    migrate,
    relay_cmd,
    relay_config,
    require_wrk,
    server,
    wrk,
)
from bench.dispatch import preload, query, wait_drained
from relay.store import db
from relay.store.records import Store
from relay.store.rows import Incoming
from relay.wildix import parse
from tests.fakes.pipedrive import FakePipedrive
from tests.fakes.server import serve

PROCESSES = (1, 2, 3)


@contextlib.contextmanager
def workers(config: Path, count: int) -> Iterator[None]:
    """``count`` `relay worker` processes, each up once its metrics port answers."""
    with contextlib.ExitStack() as stack:
        for _ in range(count):
            port = free_port()
            stack.enter_context(
                server(relay_cmd(config, "worker", "--metrics-port", str(port)), port)
            )
        yield


@contextlib.contextmanager
def threaded(app: Any) -> Iterator[str]:
    """A fake served from its own thread and event loop: the bench's waits block this one."""
    ready: list[tuple[str, asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def run() -> None:
        done = asyncio.Event()
        async with serve(app) as url:
            ready.append((url, asyncio.get_running_loop(), done))
            await done.wait()

    thread = threading.Thread(target=asyncio.run, args=(run(),), daemon=True)
    thread.start()
    while not ready:
        time.sleep(0.01)
    url, loop, done = ready[0]
    try:
        yield url
    finally:
        loop.call_soon_threadsafe(done.set)
        thread.join(10)


def drain_span(url: str) -> float:
    [(first, last)] = asyncio.run(
        query(
            url,
            "SELECT min(a.started_at), max(d.completed_at) FROM attempts a "
            "JOIN deliveries d ON d.id = a.delivery_id",
        )
    )
    return (last - first).total_seconds()


async def preload_calls(url: str, count: int, numbers: list[str]) -> None:
    """``count`` answered outbound calls' final records, each to a known person."""
    store = Store(db.create_engine(url))
    base = msgspec.json.decode(FIXTURE.read_bytes())
    base["integrationId"] = "bench01"
    batch = []
    for n in range(count):
        base["id"] = base["data"]["id"] = f"scale_call_{n}"
        flow, number = base["data"]["flows"][0], numbers[n % len(numbers)]
        flow["callee"]["phone"] = flow["callee"]["name"] = number
        flow["destination"] = flow["remotePhone"] = number
        batch.append(Incoming(parse(msgspec.json.encode(base)), ["crm"], "bench"))
    await store.record_batch(batch)
    await store.close()


def to_sink(args: argparse.Namespace, work: Path) -> None:
    sink_port = free_port()
    connectors = {
        "sink": {
            "type": "webhook",
            "url": f"http://127.0.0.1:{sink_port}/hook",
            "delivery": {"concurrency": 64},
        }
    }
    print(f"1. {args.deliveries} deliveries to bench.sink, connector concurrency 64 per worker")
    with server([sys.executable, "-m", "bench.sink", str(sink_port)], sink_port):
        for count in PROCESSES:
            with database("postgresql", work, "relay_bench_scale") as url:
                config = relay_config(work / "sink.yaml", url, free_port(), connectors)
                migrate(config)
                asyncio.run(preload(url, args.deliveries))
                with workers(config, count):
                    asyncio.run(wait_drained(url, args.deliveries, 900))
                span = drain_span(url)
                print(
                    f"   {count} worker{'s' if count > 1 else ' '}: "
                    f"{args.deliveries / span:7.0f} deliveries/s ({span:.1f} s)"
                )


def to_crm(args: argparse.Namespace, work: Path) -> None:
    limit, per = 20, 2.0  # Pipedrive Essential: 20 requests per 2 s per token
    print(
        f"2. {args.calls} call records to the Pipedrive fake (429 past {limit} per {per:g} s; "
        f"relay told rate_limit {limit}/{per:g}s)"
    )
    for count in PROCESSES:
        fake = FakePipedrive(limit=limit, interval=per)
        fake.add_user("giulia.rossi@example.org", "Giulia Rossi")
        numbers = [f"+4420{7000_0000 + n}" for n in range(50)]
        for number in numbers:
            fake.add_person(f"Known {number[-4:]}", number)
        with threaded(fake.app) as fake_url, database("postgresql", work, "relay_bench_crm") as url:
            crm = {
                "type": "pipedrive",
                "api_token": fake.api_token,
                "base_url": fake_url,
                "default_region": "GB",
                "rate_limit": {"requests": limit, "per": f"{per:g}s"},
                "delivery": {"concurrency": 8},
            }
            config = relay_config(work / "crm.yaml", url, free_port(), {"crm": crm})
            migrate(config)
            asyncio.run(preload_calls(url, args.calls, numbers))
            with workers(config, count):
                asyncio.run(wait_drained(url, args.calls, 900))
            span = drain_span(url)
        print(
            f"   {count} worker{'s' if count > 1 else ' '}: {len(fake.log) / span:5.1f} requests/s "
            f"({len(fake.log)} in {span:.1f} s); busiest {per:g} s window "
            f"{fake.burst.busiest()}/{limit}; answered 429: {fake.burst.rejected}; "
            f"call logs {len(fake.call_logs)}/{args.calls}"
        )


def ingest(args: argparse.Namespace, work: Path) -> None:
    print(f"3. webhook ingest under wrk ({args.seconds} s, 64 connections)")
    bodies = make_bodies(work / "scale.txt", 400_000, "bench01")
    for count in (1, 2):
        with database("postgresql", work, "relay_bench_ingest") as url:
            port = free_port()
            config = relay_config(
                work / "ingest.yaml",
                url,
                port,
                {"out": {"type": "log", "include_raw": False}},
                server={"host": "127.0.0.1", "port": port, "reuse_port": True},
            )
            migrate(config)
            with contextlib.ExitStack() as stack:
                for _ in range(count):
                    stack.enter_context(server(relay_cmd(config, "serve", "--no-dispatch"), port))
                r = wrk(
                    f"http://127.0.0.1:{port}/webhooks/bench01",
                    bodies,
                    seconds=args.seconds,
                    connections=64,
                )
            print(
                f"   {count} serve process{'es' if count > 1 else '  '}: {r['ok_rps']:7.0f} "
                f"events/s accepted ({int(r['non2xx'])} non-2xx)"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--deliveries", type=int, default=20_000)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--only", choices=("sink", "crm", "ingest"), action="append")
    args = ap.parse_args()
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # the threaded fake's
    require_wrk()
    print(machine())
    work = Path(tempfile.mkdtemp(prefix="relay-bench-scale-"))
    parts = {"sink": to_sink, "crm": to_crm, "ingest": ingest}
    for name in args.only or parts:
        parts[name](args, work)


if __name__ == "__main__":
    main()
