"""What every benchmark needs: the machine's description, servers in subprocesses, wrk, bodies."""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import msgspec
import psutil
import yaml

from relay.wildix.signature import sign

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "relay" / "wildix" / "samples" / "call_completed.json"
SECRET = "bench-secret-0123456789abcdef"
PG_ADMIN = os.environ.get("RELAY_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def machine() -> str:
    cpu = "unknown cpu"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = ", ".join(
        f"{p} {metadata.version(p)}" for p in ("litestar", "uvicorn", "sqlalchemy", "asyncpg")
    )
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split()[:2]
    return (
        f"machine: {platform.node()} · {os.cpu_count()} cores · {cpu} · "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB\n"
        f"software: Python {platform.python_version()} · {versions} · {' '.join(wrk)}"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


@contextmanager
def server(cmd: list[str], port: int, log: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_port(port, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log:
            out.close()  # type: ignore[union-attr]


def uvicorn_cmd(app: str, port: int) -> list[str]:
    """The same server settings as `relay serve`: one worker, auto loop/http, no access log."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]


def make_bodies(path: Path, count: int, integration: str, size: int = 1500) -> Bodies:
    """Unique, signed ~1.5 KB call records: one "signature body" line each."""
    base = msgspec.json.decode(FIXTURE.read_bytes())
    base["integrationId"] = integration
    with open(path, "w") as f:
        for n in range(count):
            base["id"] = base["data"]["id"] = f"bench_{n}_{time.time_ns()}"
            base["data"]["note"] = ""
            pad = size - len(msgspec.json.encode(base))
            base["data"]["note"] = "x" * max(pad, 0)
            body = msgspec.json.encode(base)
            f.write(f"{sign(body, SECRET)} {body.decode()}\n")
    return Bodies(path)


_RESULT = re.compile(r"RESULT (.*)")


class Bodies:
    """A file of signed bodies and how many of them runs have sent, so no run repeats one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.used = 0


def wrk(
    url: str,
    bodies: Bodies,
    *,
    seconds: int,
    connections: int = 32,
    threads: int = 1,
    delay_ms: float = 0,
) -> dict[str, float]:
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(ROOT / "bench" / "post.lua"),
        url,
        "--",
        str(bodies.path),
        str(threads),
        str(delay_ms),
        str(bodies.used),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    match = _RESULT.search(out)
    if not match:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    r = {k: float(v) for k, v in (kv.split("=") for kv in match.group(1).split())}
    bodies.used += int(r["requests"]) + connections  # in flight at the end count too
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["ok_rps"] = (r["requests"] - r["non2xx"]) / (r["duration_us"] / 1e6)
    return r


def ms(us: float) -> str:
    return f"{us / 1000:.1f} ms"


@contextmanager
def database(kind: str, workdir: Path, name: str) -> Iterator[str]:
    """A fresh, migrated database for one run."""
    if kind == "sqlite":
        path = workdir / f"{name}.db"
        for p in workdir.glob(f"{name}.db*"):
            p.unlink()
        yield f"sqlite+aiosqlite:///{path}"
        return
    import psycopg2  # only the admin statements; relay itself uses asyncpg

    admin = psycopg2.connect(PG_ADMIN)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    url = f"{base}/{name}"
    try:
        yield url
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def relay_config(
    path: Path, db_url: str, port: int, connectors: dict[str, Any], **extra: Any
) -> Path:
    data = {
        "database": {"url": db_url, "pool_size": 20},
        "server": {"host": "127.0.0.1", "port": port},
        "logging": {"level": os.environ.get("BENCH_LOG_LEVEL", "INFO"), "format": "json"},
        "connectors": connectors,
        "integrations": {
            "bench01": {
                "secret": SECRET,
                "routes": [{"connector": name, "events": ["call:*"]} for name in connectors],
            }
        },
        **extra,
    }
    path.write_text(yaml.safe_dump(data))
    return path


def relay_cmd(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "relay", "--config", str(config), *args]


def migrate(config: Path) -> None:
    subprocess.run(relay_cmd(config, "migrate"), check=True, capture_output=True, cwd=ROOT)


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def require_wrk() -> None:
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")
