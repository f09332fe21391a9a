"""Dispatch throughput and ingest→delivery lag, to a local HTTP sink.

1. backlog: N stored events, then `relay worker` fans them out; deliveries/s from the first
   attempt to the last completion.
2. steady: `relay serve` (ingest + dispatch in one process) under a fixed offered rate; the lag
   from an event's commit to its delivery's completion.

    .venv/bin/python -m bench.dispatch [--events 20000] [--db sqlite,postgresql] [--rate 500]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import msgspec
from sqlalchemy import text

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
from relay.store import db
from relay.store.records import Store
from relay.store.rows import Incoming
from relay.wildix import parse


async def preload(url: str, count: int) -> None:
    engine = db.create_engine(url)
    store = Store(engine)
    base = msgspec.json.decode(FIXTURE.read_bytes())
    base["integrationId"] = "bench01"
    for start in range(0, count, 500):
        batch = []
        for n in range(start, min(start + 500, count)):
            base["id"] = base["data"]["id"] = f"backlog_{n}"
            batch.append(Incoming(parse(msgspec.json.encode(base)), ["sink"], "bench"))
        await store.record_batch(batch)
    await store.close()


async def query(url: str, sql: str) -> list[tuple]:
    engine = db.create_engine(url)
    async with engine.connect() as conn:
        rows = [tuple(r) for r in await conn.execute(text(sql))]
    await engine.dispose()
    return rows


async def wait_drained(url: str, total: int, within: float) -> float:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        [(done,)] = await query(url, "SELECT count(*) FROM deliveries WHERE state = 'succeeded'")
        if done >= total:
            return time.monotonic()
        await asyncio.sleep(0.2)
    raise RuntimeError(f"only {done}/{total} delivered within {within}s")


def as_dt(value: datetime | str) -> datetime:
    """SQLite hands raw SQL timestamps back as text."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def seconds_between(rows: list[tuple]) -> list[float]:
    return [(as_dt(b) - as_dt(a)).total_seconds() for a, b in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--db", default="sqlite,postgresql")
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()
    require_wrk()
    print(machine())
    work = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    sink_port = free_port()
    connectors = {
        "sink": {
            "type": "webhook",
            "url": f"http://127.0.0.1:{sink_port}/hook",
            "delivery": {"concurrency": args.concurrency},
        }
    }
    print(f"sink: bench.sink on 127.0.0.1:{sink_port}; connector concurrency {args.concurrency}\n")
    with server([sys.executable, "-m", "bench.sink", str(sink_port)], sink_port):
        for kind in args.db.split(","):
            with database(kind, work, "relay_bench_dispatch") as url:
                config = relay_config(work / f"{kind}.yaml", url, free_port(), connectors)
                migrate(config)
                asyncio.run(preload(url, args.events))
                with server(relay_cmd(config, "worker"), sink_port):
                    asyncio.run(wait_drained(url, args.events, 600))
                [(first, last)] = asyncio.run(
                    query(
                        url,
                        "SELECT min(a.started_at), max(d.completed_at) FROM attempts a "
                        "JOIN deliveries d ON d.id = a.delivery_id",
                    )
                )
                [span] = seconds_between([(first, last)])
                print(
                    f"{kind:<11} backlog of {args.events}: {args.events / span:8.0f} deliveries/s "
                    f"({span:.1f} s)"
                )

            with database(kind, work, "relay_bench_lag") as url:
                port = free_port()
                config = relay_config(work / f"{kind}-lag.yaml", url, port, connectors)
                migrate(config)
                bodies = make_bodies(work / "lag.txt", args.rate * args.seconds * 2, "bench01")
                with server(relay_cmd(config, "serve"), port):
                    r = wrk(
                        f"http://127.0.0.1:{port}/webhooks/bench01",
                        bodies,
                        seconds=args.seconds,
                        delay_ms=1000 / args.rate,
                    )
                    sent = int(r["requests"] - r["non2xx"])
                    asyncio.run(wait_drained(url, sent, 120))
                lags = sorted(
                    seconds_between(
                        asyncio.run(
                            query(
                                url,
                                "SELECT e.received_at, d.completed_at FROM deliveries d "
                                "JOIN events e ON e.id = d.event_id",
                            )
                        )
                    )
                )
                q = statistics.quantiles(lags, n=100)
                print(
                    f"{kind:<11} steady {r['rps']:.0f} events/s: lag ingest→delivered "
                    f"p50 {q[49] * 1000:.1f} ms  p99 {q[98] * 1000:.1f} ms  "
                    f"max {lags[-1] * 1000:.1f} ms"
                )


if __name__ == "__main__":
    main()
