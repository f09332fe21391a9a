"""Durable ingest against the bare-endpoint ceiling, side by side in one run, on SQLite and
PostgreSQL; then a fixed-rate run (default 1,000 events/s) with its latency distribution.

    .venv/bin/python -m bench.ingest [--seconds 10] [--db sqlite,postgresql] [--rate 1000]
        [--sqlite-sync full|normal]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import psutil
import yaml
from sqlalchemy import text

from bench.common import (
    database,
    free_port,
    machine,
    make_bodies,
    migrate,
    ms,
    relay_cmd,
    relay_config,
    require_wrk,
    server,
    uvicorn_cmd,
    wrk,
)
from relay.store import db


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the relay process: a cost per event that the machine's noise moves
    far less than the throughput."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def line(label: str, r: dict[str, float], ceiling: float | None = None) -> str:
    ratio = f"  {r['ok_rps'] / ceiling:6.1%} of ceiling" if ceiling else ""
    return (
        f"{label:<28} {r['ok_rps']:8.0f} ev/s   p50 {ms(r['p50']):>9}  p99 {ms(r['p99']):>9}  "
        f"max {ms(r['max']):>9}   non-2xx {int(r['non2xx'])}  timeouts {int(r['timeouts'])}"
        f"{ratio}"
    )


async def stored(url: str) -> int:
    engine = db.create_engine(url)
    async with engine.connect() as conn:
        n = (await conn.execute(text("SELECT count(*) FROM events"))).scalar_one()
    await engine.dispose()
    return int(n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--db", default="sqlite,postgresql")
    ap.add_argument("--rate", type=int, default=1000, help="events/s offered in the fixed-rate run")
    ap.add_argument("--sqlite-sync", choices=["full", "normal"], default="full")
    args = ap.parse_args()
    require_wrk()
    print(machine())
    print(f"SQLite database.sqlite_sync: {args.sqlite_sync}")
    print(
        f"load: wrk, 1 thread, {args.connections} connections, {args.seconds}s, "
        "unique signed 1.5 KB bodies; servers: uvicorn, 1 worker\n"
    )
    work = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    # enough unique bodies for one database's runs; the ceiling does not care about repeats
    bodies = make_bodies(
        work / "bodies.txt", 8_000 * (args.seconds + 2) + args.rate * args.seconds, "bench01"
    )

    port = free_port()
    url = f"http://127.0.0.1:{port}/webhooks/bench01"
    with server(uvicorn_cmd("bench.bare_app:app", port), port):
        wrk(url, bodies, seconds=2, connections=args.connections)  # warm-up
        ceiling = wrk(url, bodies, seconds=args.seconds, connections=args.connections)
    print(line("bare endpoint (ceiling)", ceiling))

    for kind in args.db.split(","):
        bodies.used = 0  # a fresh database: every body is new to it
        with database(kind, work, "relay_bench") as db_url:
            port = free_port()
            url = f"http://127.0.0.1:{port}/webhooks/bench01"
            config = relay_config(work / f"{kind}.yaml", db_url, port, {"sink": {"type": "log"}})
            if kind == "sqlite":
                data = yaml.safe_load(config.read_text())
                data["database"]["sqlite_sync"] = args.sqlite_sync
                config.write_text(yaml.safe_dump(data))
            migrate(config)
            cmd = relay_cmd(config, "serve", "--no-dispatch")
            with server(cmd, port, work / f"{kind}.log") as proc:
                wrk(url, bodies, seconds=2, connections=args.connections)  # warm-up
                before = asyncio.run(stored(db_url))
                cpu = cpu_seconds(proc.pid)
                r = wrk(url, bodies, seconds=args.seconds, connections=args.connections)
                cpu = cpu_seconds(proc.pid) - cpu
                after = asyncio.run(stored(db_url))
                print(line(f"relay ingest, {kind}", r, ceiling["ok_rps"]))
                accepted = int(r["requests"] - r["non2xx"])
                print(
                    f"{'':<28} {after - before} events stored for {accepted} acknowledged; "
                    f"relay process {cpu / max(accepted, 1) * 1e6:.0f} µs CPU per event"
                )
                interval = 1000 / args.rate  # one wrk thread paces every request
                fixed = wrk(
                    url,
                    bodies,
                    seconds=args.seconds,
                    connections=args.connections,
                    delay_ms=interval,
                )
                print(line(f"  fixed {args.rate}/s offered", fixed))
                print(
                    f"{'':<28} p90 {ms(fixed['p90'])}  p99.9 {ms(fixed['p999'])}  "
                    f"(achieved {fixed['rps']:.0f}/s)"
                )


if __name__ == "__main__":
    main()
