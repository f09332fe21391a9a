"""Cluster-wide rate limits on PostgreSQL: what one take of a shared bucket costs.

Each take is one statement (relay/store/sql/rate.postgresql.sql) on a connection the process
keeps. Two runs, each with several processes (each its own ``Store``, as `relay worker`s are):

- **capacity**: buckets whose tokens never make anyone wait, taken as fast as the processes can —
  takes/s for the cluster, the latency of one take, and the database statements per take
  (committed transactions in ``pg_stat_database``: a take is one autocommit statement);
- **paced**: one bucket of ``--rate`` per second, evenly spaced as a CRM's ``rate_limit`` is
  (``ctx.limiter(bucket, 1, 1 / rate)``), shared by every process, each taking as fast as it is
  let — the rate the cluster got, its busiest one-second window, and statements per request.

Statements are counted as committed transactions less those of a run that only connects and
takes one token per process (connection setup).

    python -m bench.rate_buckets [--processes 3] [--tasks 8] [--seconds 5] [--rate 20]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import tempfile
import time
from pathlib import Path

import psycopg2

from bench.common import PG_ADMIN, database, machine
from relay.connector import Limiters
from relay.store import db
from relay.store.records import Store

NAME = "relay_bench_rate"


async def takes(url: str, tasks: int, seconds: float, interval: float, bucket: str) -> list[float]:
    """Take tokens for ``seconds`` with ``tasks`` concurrent takers: the time of each take."""
    store = Store(db.create_engine(url))
    limiter = Limiters(store).get("bench", bucket, 1, interval)
    done: list[float] = []
    latencies: list[float] = []
    await limiter.acquire()  # connection setup, counted by the baseline run
    stop = time.monotonic() + seconds

    async def taker() -> None:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            await limiter.acquire()
            latencies.append(time.perf_counter() - t0)
            done.append(time.time())

    try:
        await asyncio.gather(*(taker() for _ in range(tasks)))
    finally:
        await store.close()
    return [*done, -1.0, *latencies]  # one list through the process pool: times, then latencies


async def migrate(url: str) -> None:
    engine = db.create_engine(url)
    await db.migrate(engine)
    await engine.dispose()


def child(args: tuple[str, int, float, float, str]) -> list[float]:
    return asyncio.run(takes(*args))


def commits(url: str) -> int:
    """Committed transactions in the bench database so far (stats are flushed within ~1 s)."""
    time.sleep(1.5)
    with psycopg2.connect(PG_ADMIN) as conn, conn.cursor() as cur:
        cur.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (NAME,))
        return int(cur.fetchone()[0])


def busiest(times: list[float], window: float = 1.0) -> int:
    times, best, start = sorted(times), 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def transactions(
    url: str, processes: int, tasks: int, seconds: float, bucket: str, interval: float
) -> tuple[int, list[list[float]]]:
    before = commits(url)
    jobs = [(url, tasks, seconds, interval, bucket or f"p{n}") for n in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        results = pool.map(child, jobs)
    return commits(url) - before, results


def run(url: str, processes: int, tasks: int, seconds: float, rate: float | None) -> None:
    bucket, interval = ("one", 1 / rate) if rate else ("", 1e-9)
    setup, _ = transactions(url, processes, tasks, 0, bucket, interval)
    statements, results = transactions(url, processes, tasks, seconds, bucket, interval)
    times = [t for r in results for t in r[: r.index(-1.0)]]
    lat = sorted(t for r in results for t in r[r.index(-1.0) + 1 :])
    n = len(times)
    span = max(times) - min(times)
    label = f"paced at {rate:g}/s, one bucket" if rate else "capacity, a bucket per process"
    print(
        f"{label}: {processes} processes x {tasks} takers, {seconds:g} s: {n} takes, "
        f"{n / span:,.0f} takes/s; take p50 {lat[n // 2] * 1e3:.2f} ms, "
        f"p99 {lat[int(n * 0.99)] * 1e3:.2f} ms; busiest 1 s window {busiest(times)}; "
        f"{(statements - setup) / n:.2f} DB statements per take"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=20.0)
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp, database("postgresql", Path(tmp), NAME) as url:
        asyncio.run(migrate(url))
        run(url, 1, 1, args.seconds, None)
        run(url, args.processes, args.tasks, args.seconds, None)
        run(url, args.processes, args.tasks, args.seconds, args.rate)


if __name__ == "__main__":
    main()
