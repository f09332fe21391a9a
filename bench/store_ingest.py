"""The store's ingest write alone: ``Store.record_batch`` in batches of 16, no HTTP in front.

What a change to relay/store costs per event, without the request handling and wrk that make the
end-to-end ingest bench move by ±10% on a shared machine. Prints events/s and CPU µs per event.

    python -m bench.store_ingest [--events 16000] [--db sqlite,postgresql] [--sqlite-sync full]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import msgspec

from bench.common import FIXTURE, database, machine
from relay.store import db
from relay.store.records import Store
from relay.store.rows import Incoming
from relay.wildix import parse


async def run(url: str, count: int, batch: int, sync: db.SqliteSync) -> tuple[float, float]:
    engine = db.create_engine(url, sqlite_sync=sync)
    await db.ensure_schema(engine, auto_migrate=True)
    store = Store(engine)
    body = msgspec.json.decode(FIXTURE.read_bytes())
    items = []
    for n in range(count):
        body["id"] = body["data"]["id"] = f"bench-{n}"
        items.append(Incoming(parse(msgspec.json.encode(body)), ["log", "file"], "webhook"))
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        for start in range(0, count, batch):
            await store.record_batch(items[start : start + batch])
        return count / (time.perf_counter() - wall), (time.process_time() - cpu) / count * 1e6
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=16000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument("--sqlite-sync", choices=["full", "normal"], default="full")
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.db.split(","):
            with database(kind, Path(tmp), "relay_bench_store") as url:
                rate, cpu = asyncio.run(run(url, args.events, args.batch, args.sqlite_sync))
            print(
                f"{kind:<11} (sqlite_sync {args.sqlite_sync}) {args.events} events "
                f"in batches of {args.batch}: "
                f"{rate:8.0f} ev/s, {cpu:5.1f} µs CPU/event"
            )


if __name__ == "__main__":
    main()
