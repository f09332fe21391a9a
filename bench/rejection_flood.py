"""A flood of unauthenticated requests carrying 1 MB integration ids, against `relay serve`:
what it costs in memory, database and log.

Half the requests go to ``POST /webhooks`` with the id in the body, half to
``POST /webhooks/<id>`` with the id in the path (if the server takes such a URL at all). Prints
the relay process's RSS, the database's size and the log's size before and after.

    .venv/bin/python -m bench.rejection_flood [--requests 10000] [--db sqlite] [--connections 4]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import text

from bench.common import (
    database,
    free_port,
    machine,
    migrate,
    relay_cmd,
    relay_config,
    rss_mb,
    server,
)
from relay.store import db

ID_SIZE = 1_000_000  # characters; the body stays under the default 1 MiB limit
SLICE = 2000  # requests between two RSS readings


async def post(port: int, path: bytes, body: bytes) -> int:
    """One request on its own connection; the status code, or 0 if the connection failed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST %s HTTP/1.1\r\nhost: relay\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n" % (path, len(body))
        )
        writer.write(body)
        await writer.drain()
        status = await reader.readline()
        return int(status.split()[1]) if status else 0
    except (OSError, ValueError, IndexError):
        return 0
    finally:
        writer.close()


def request(n: int, path_id: int) -> tuple[bytes, bytes]:
    """The n-th request: a distinct id, of ``path_id`` characters in the path when that is not
    0 (every other request), else of 1 MB in the body."""
    if path_id and n % 2:
        iid = f"{n:08d}".encode() + b"p" * (path_id - 8)
        return b"/webhooks/" + iid, b'{"type": "call:completed"}'
    iid = f"{n:08d}".encode() + b"i" * (ID_SIZE - 8)
    return b"/webhooks", b'{"integrationId": "' + iid + b'", "type": "call:completed"}'


async def longest_path_id(port: int) -> int:
    """The longest id (of 1 MB, 64 KiB, 8 KiB) the server takes in a path: 0 if none."""
    for size in (ID_SIZE, 65536, 8192):
        if await post(port, *request(1, size)) == 404:
            return size
    return 0


async def flood(port: int, count: int, connections: int, start: int, path_id: int) -> Counter[int]:
    statuses: Counter[int] = Counter()
    queue = iter(range(start, start + count))

    async def worker() -> None:
        for n in queue:
            statuses[await post(port, *request(n, path_id))] += 1

    await asyncio.gather(*(worker() for _ in range(connections)))
    return statuses


async def database_bytes(url: str) -> tuple[int, int]:
    """(size on disk, rows in rejections)."""
    engine = db.create_engine(url)
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT count(*) FROM rejections"))).scalar_one()
        if db.is_sqlite(url):
            path = Path(url.split("///", 1)[1])
            size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
        else:
            size = (
                await conn.execute(text("SELECT pg_database_size(current_database())"))
            ).scalar_one()
    await engine.dispose()
    return int(size), int(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument(
        "--warm-up",
        type=int,
        default=1000,
        help="requests before the first reading: the allocator's working set for 1 MB bodies",
    )
    ap.add_argument("--db", default="sqlite")
    args = ap.parse_args()
    print(machine())
    work = Path(tempfile.mkdtemp(prefix="relay-flood-"))
    log = work / "relay.log"
    for kind in args.db.split(","):
        with database(kind, work, "relay_flood") as db_url:
            port = free_port()
            config = relay_config(work / f"{kind}.yaml", db_url, port, {"sink": {"type": "log"}})
            migrate(config)
            with server(relay_cmd(config, "serve", "--no-dispatch"), port, log) as proc:
                paths = asyncio.run(longest_path_id(port))
                print(
                    f"\n{kind}: the longest id the server takes in a path (of 1 MB, 64 KiB, "
                    f"8 KiB): {paths} characters; half the flood uses it"
                    if paths
                    else f"\n{kind}: no long id taken in a path: the whole flood uses the body"
                )
                warm = asyncio.run(flood(port, args.warm_up, args.connections, 1, paths))
                rss0, (db0, rows0) = rss_mb(proc.pid), asyncio.run(database_bytes(db_url))
                log0 = log.stat().st_size
                t0 = time.monotonic()
                got: Counter[int] = Counter()
                trace = []
                for start in range(0, args.requests, SLICE):
                    count = min(SLICE, args.requests - start)
                    first = args.warm_up + 1 + start
                    got += asyncio.run(flood(port, count, args.connections, first, paths))
                    trace.append(f"{rss_mb(proc.pid):.1f}")
                seconds = time.monotonic() - t0
                rss1, (db1, rows1) = rss_mb(proc.pid), asyncio.run(database_bytes(db_url))
                log1 = log.stat().st_size
            print(f"warm-up: {args.warm_up} requests {dict(warm)}")
            print(
                f"flood: {args.requests} requests of ~1 MB in {seconds:.0f} s "
                f"({args.requests / seconds:.0f}/s), answers {dict(got)}"
            )
            print(f"RSS       {rss0:8.1f} → {rss1:8.1f} MiB ({(rss1 - rss0) / rss0:+.1%})")
            print(f"RSS every {SLICE} requests: {', '.join(trace)} MiB")
            print(
                f"database  {db0 / 2**20:8.1f} → {db1 / 2**20:8.1f} MiB "
                f"(+{(db1 - db0) / 2**20:.1f}); rejections rows {rows0} → {rows1}"
            )
            print(
                f"log       {log0 / 2**20:8.2f} → {log1 / 2**20:8.2f} MiB "
                f"(+{(log1 - log0) / 2**20:.2f})"
            )


if __name__ == "__main__":
    main()
