"""The dashboard's overview on a busy store: its tables and its charts, per time range.

Seeds ``--events`` events received over the last day (two integrations), each with two
deliveries and their attempts (most delivered at once, one in ten after a retry, one in a
hundred dead), then times ``Queries.overview`` and ``charts`` for each range: the first
drawing in a process, and a refresh (median of 5), which reads only the unsettled buckets.

    python -m bench.dashboard_overview [--events 100000] [--db sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import yaml

from bench.common import database
from relay.admin import charts
from relay.admin.queries import Queries
from relay.config import Settings, parse_config
from relay.registry import connector_types
from relay.store import db
from relay.store.records import Store
from relay.store.tables import attempts, deliveries, events, utcnow

CONNECTORS = ("crm", "audit")
INTEGRATIONS = ("bench01", "bench02")
CHUNK = 2000


def settings(url: str) -> Settings:
    data = {
        "database": {"url": url},
        "connectors": {name: {"type": "log"} for name in CONNECTORS},
        "integrations": {
            iid: {
                "secret": "s" * 32,
                "routes": [{"connector": c, "events": ["*"]} for c in CONNECTORS],
            }
            for iid in INTEGRATIONS
        },
    }
    return parse_config(yaml.safe_dump(data), connector_types=connector_types([]), env={})


async def seed(store: Store, count: int) -> None:
    now, rng = utcnow(), random.Random(7)
    next_delivery = 1
    for start in range(0, count, CHUNK):
        evs, dels, tries = [], [], []
        for n in range(start, min(start + CHUNK, count)):
            at = now - timedelta(seconds=rng.uniform(0, 86400))
            iid = INTEGRATIONS[n % 2]
            evs.append(
                {
                    "id": n + 1,
                    "integration_id": iid,
                    "type": "call:completed",
                    "subject_id": f"c{n}",
                    "call_id": f"c{n}",
                    "body_sha256": f"{n:064x}",
                    "raw": b"{}",
                    "occurred_at": at,
                    "received_at": at,
                    "transport": "webhook",
                    "transport_meta": {},
                }
            )
            for connector in CONNECTORS:
                roll = rng.random()
                outcomes = (
                    ["dead"]
                    if roll < 0.01
                    else ["retry", "succeeded"]
                    if roll < 0.1
                    else ["succeeded"]
                )
                dels.append(
                    {
                        "id": next_delivery,
                        "event_id": n + 1,
                        "integration_id": iid,
                        "connector": connector,
                        "ordering_key": f"{connector}|c{n}",
                        "state": outcomes[-1],
                        "attempts": len(outcomes),
                        "next_attempt_at": at,
                        "created_at": at,
                        "updated_at": at,
                        "completed_at": at,
                    }
                )
                for number, outcome in enumerate(outcomes, 1):
                    tries.append(
                        {
                            "delivery_id": next_delivery,
                            "number": number,
                            "started_at": at + timedelta(seconds=number),
                            "duration_ms": int(rng.lognormvariate(5, 0.6)),
                            "outcome": outcome,
                            "status_code": 200,
                            "worker": "bench",
                        }
                    )
                next_delivery += 1
        async with store.engine.begin() as conn:
            await conn.execute(events.insert(), evs)
            await conn.execute(deliveries.insert(), dels)
            await conn.execute(attempts.insert(), tries)


async def timed(work) -> float:  # type: ignore[no-untyped-def]
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        await work()
        runs.append((time.perf_counter() - t) * 1000)
    return statistics.median(runs)


async def run(url: str, count: int) -> list[str]:
    engine = db.create_engine(url)
    await db.ensure_schema(engine, auto_migrate=True)
    store = Store(engine)
    st = settings(url)
    try:
        await seed(store, count)
        if engine.dialect.name == "postgresql":
            async with engine.begin() as conn:
                await conn.exec_driver_sql("ANALYZE")
        queries = Queries(store, st)
        lines = [f"  overview tables: {await timed(queries.overview):7.1f} ms"]
        for key in charts.RANGES:
            charts._settled.clear()  # a process that has not drawn this range yet
            t = time.perf_counter()
            await charts.charts(store, st, key)
            cold = (time.perf_counter() - t) * 1000
            warm = await timed(lambda key=key: charts.charts(store, st, key))
            lines.append(f"  charts {key:>4}: first {cold:7.1f} ms, refresh {warm:7.1f} ms")
        return lines
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--db", default="sqlite,postgresql")
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.db.split(","):
            with database(kind, Path(tmp), "relay_bench_dashboard") as url:
                lines = asyncio.run(run(url, args.events))
            print(f"{kind}: {args.events} events in the last 24 h, 2 deliveries each")
            print("\n".join(lines))


if __name__ == "__main__":
    main()
