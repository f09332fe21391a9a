"""`server.reuse_port`: two real `relay serve --no-dispatch` processes on one port and one
PostgreSQL store, as docs/deployment.md's "Scaling out" describes; refused on SQLite."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import httpx
from sqlalchemy import func, select

from relay.store import db
from relay.store.tables import events
from relay.wildix.signature import sign
from tests.support.cli import RELAY, free_port, run, write
from tests.support.relay import SECRET, call_body, config_dict
from tests.support.waiting import eventually


def config(tmp_path: Path, db_url: str, port: int) -> Path:
    data = config_dict(db_url, {"out": {"type": "log"}})
    data["server"] = {"host": "127.0.0.1", "port": port, "reuse_port": True}
    return write(tmp_path / "relay.yaml", data)


def listens(pid: int, port: int) -> bool:
    """Process ``pid`` has a socket of its own listening on TCP ``port`` (Linux: /proc). With
    SO_REUSEPORT each process listens on a socket of its own, and the kernel hands a new
    connection to one of the listening ones; a socket bound but not yet listening gets none."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")  # 0A: LISTEN
    with contextlib.suppress(OSError):  # the process exited, or an fd closed as we looked
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return True
    return False


def start_serve(path: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*RELAY, "--config", str(path), "serve", "--no-dispatch"],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def test_two_serve_processes_share_one_port_and_either_alone_keeps_it(
    pg_url: str, tmp_path: Path
) -> None:
    port = free_port()
    path = config(tmp_path, pg_url, port)
    assert run("migrate", config=path).returncode == 0
    procs = [start_serve(path, tmp_path / f"serve{n}.log") for n in range(2)]
    url = f"http://127.0.0.1:{port}/webhooks/q7m2xk"

    async def post(call_id: str) -> int:
        body = call_body(call_id)
        # a new connection per request: the kernel picks a listener per connection
        async with httpx.AsyncClient(timeout=5) as client:
            headers = {"x-signature": sign(body, SECRET), "content-type": "application/json"}
            return (await client.post(url, content=body, headers=headers)).status_code

    async def listening() -> bool:
        for n, proc in enumerate(procs):  # the second bind fails without SO_REUSEPORT
            assert proc.poll() is None, (tmp_path / f"serve{n}.log").read_text()
        # each one, not just whichever answers first: the other must serve alone below
        if not all(listens(proc.pid, port) for proc in procs):
            return False
        with contextlib.suppress(httpx.HTTPError):
            async with httpx.AsyncClient(timeout=1) as client:
                return (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
        return False

    try:
        await eventually(listening, "both relay serve processes to listen")
        codes = [await post(f"reuse_{n}") for n in range(20)]
        procs[0].terminate()
        procs[0].wait(30)
        # the port is still served, by the other process alone
        codes += [await post(f"reuse_after_{n}") for n in range(5)]
        assert procs[1].poll() is None
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
    assert codes == [200] * 25
    engine = db.create_engine(pg_url)
    async with engine.connect() as conn:
        stored = await conn.scalar(select(func.count()).select_from(events))
    await engine.dispose()
    assert stored == 25


def test_reuse_port_on_sqlite_is_refused_with_its_key_path(tmp_path: Path) -> None:
    path = config(tmp_path, f"sqlite+aiosqlite:///{tmp_path}/relay.db", free_port())
    refused = run("check-config", config=path)
    assert refused.returncode != 0
    assert "$.server.reuse_port" in refused.stderr + refused.stdout
    assert "needs PostgreSQL" in refused.stderr + refused.stdout
