"""Soak: `relay serve` (ingest + dispatch) at a steady offered rate for 10 minutes, delivering to
a local sink. Prints the relay process's RSS over time and whether the queue drained.

    .venv/bin/python -m bench.soak [--minutes 10] [--rate 200] [--db sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import (
    database,
    free_port,
    machine,
    make_bodies,
    migrate,
    relay_cmd,
    relay_config,
    require_wrk,
    rss_mb,
    server,
    wrk,
)
from bench.dispatch import query


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--db", default="sqlite")
    ap.add_argument("--sample", type=float, default=30, help="seconds between RSS samples")
    args = ap.parse_args()
    require_wrk()
    print(machine())
    seconds = int(args.minutes * 60)
    work = Path(tempfile.mkdtemp(prefix="relay-soak-"))
    bodies = make_bodies(work / "soak.txt", int(args.rate * seconds * 1.05) + 1000, "bench01")
    sink_port, port = free_port(), free_port()
    connectors = {"sink": {"type": "webhook", "url": f"http://127.0.0.1:{sink_port}/hook"}}
    print(
        f"soak: {args.minutes:g} min at {args.rate} events/s offered, {args.db}, one delivery "
        "per event to a local sink\n"
    )
    with (
        server([sys.executable, "-m", "bench.sink", str(sink_port)], sink_port),
        database(args.db, work, "relay_soak") as url,
    ):
        config = relay_config(work / "soak.yaml", url, port, connectors)
        migrate(config)
        with server(relay_cmd(config, "serve"), port, work / "soak.log") as proc:
            samples: list[tuple[float, float]] = []
            start = time.monotonic()
            load: dict[str, float] = {}

            def run_load() -> None:
                load.update(
                    wrk(
                        f"http://127.0.0.1:{port}/webhooks/bench01",
                        bodies,
                        seconds=seconds,
                        delay_ms=1000 / args.rate,
                    )
                )

            thread = threading.Thread(target=run_load)
            thread.start()
            while thread.is_alive():
                samples.append((time.monotonic() - start, rss_mb(proc.pid)))
                print(f"  t={samples[-1][0]:6.0f}s  rss={samples[-1][1]:7.1f} MB", flush=True)
                thread.join(args.sample)
            accepted = int(load["requests"] - load["non2xx"])
            drained = False
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                [(left,)] = asyncio.run(
                    query(
                        url, "SELECT count(*) FROM deliveries WHERE state IN ('pending', 'running')"
                    )
                )
                if left == 0:
                    drained = True
                    break
                time.sleep(1)
            samples.append((time.monotonic() - start, rss_mb(proc.pid)))
            [(delivered,)] = asyncio.run(
                query(url, "SELECT count(*) FROM deliveries WHERE state = 'succeeded'")
            )
    settled = [mb for t, mb in samples if t >= 60] or [mb for _, mb in samples]
    growth = (settled[-1] - settled[0]) / settled[0]
    print(
        f"\noffered {load['rps']:.0f}/s, acknowledged {accepted}, delivered {delivered}, "
        f"non-2xx {int(load['non2xx'])}, timeouts {int(load['timeouts'])}"
    )
    print(
        f"RSS after warm-up {settled[0]:.1f} MB → end {settled[-1]:.1f} MB "
        f"({growth:+.1%}; flat within 10%: {'yes' if abs(growth) <= 0.10 else 'NO'})"
    )
    print(f"queue drained: {'yes' if drained else 'NO'}")


if __name__ == "__main__":
    main()
