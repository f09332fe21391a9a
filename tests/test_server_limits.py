"""A real `relay serve` under slow clients: with the open-files limit of a small systemd unit, a
crowd of connections that send their request a byte at a time neither starves a legitimate request
nor stays open past the deadlines in `server:` (relay/cli/http_limits.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from relay.wildix.signature import sign
from tests.support.cli import RELAY, free_port, write
from tests.support.relay import SECRET, call_body, config_dict
from tests.support.waiting import eventually

OPEN_FILES = 256  # the relay process's limit: the slow crowd below is larger
SLOW_CLIENTS = 300
LIMITS = {
    "max_connections": 50,
    "header_timeout": "1s",
    "body_timeout": "1s",
    "keep_alive_timeout": "1s",
    "max_header_size": 4096,
}


def _low_open_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))


def start_serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """`relay serve` as systemd would start it with a small LimitNOFILE."""
    return subprocess.Popen(
        [*RELAY, "--config", str(config), "serve", "--no-dispatch"],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=_low_open_files,
    )


@dataclass
class Served:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    port = free_port()
    data = config_dict(f"sqlite+aiosqlite:///{tmp_path}/relay.db", {"out": {"type": "log"}})
    data["server"] = {"host": "127.0.0.1", "port": port, **LIMITS}
    data["logging"] = {"level": "INFO", "format": "text"}
    proc = start_serve(write(tmp_path / "relay.yaml", data), tmp_path / "serve.log")
    served = Served(port, proc)

    async def ready() -> bool:
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        with contextlib.suppress(httpx.HTTPError):
            async with httpx.AsyncClient(timeout=1) as client:
                return (await client.get(served.url + "/readyz")).status_code == 200
        return False

    try:
        await eventually(ready, "relay serve to be ready")
        yield served
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class SlowClient:
    """Sends a request in small pieces, one every ``interval`` seconds, until the server ends the
    connection; keeps what the server answered."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.received = b""
        self.reading = asyncio.create_task(self._read())

    @property
    def closed(self) -> bool:
        return self.reading.done()

    @classmethod
    async def open(cls, port: int, start: bytes) -> SlowClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(start)
        return cls(reader, writer)

    async def trickle(self, piece: bytes, interval: float = 0.2) -> None:
        while not self.closed:
            try:
                self.writer.write(piece)
                await self.writer.drain()
            except ConnectionError:
                break
            await asyncio.wait({self.reading}, timeout=interval)
        self.writer.close()

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await self.reader.read(65536):
                self.received += chunk


async def crowd(port: int, start: bytes, piece: bytes, n: int) -> list[SlowClient]:
    clients = [await SlowClient.open(port, start) for _ in range(n)]
    for client in clients:
        asyncio.create_task(client.trickle(piece))  # noqa: RUF006 (they end with the connection)
    return clients


async def legitimate(served: Served) -> httpx.Response:
    body = call_body("slow-crowd-1")
    headers = {"content-type": "application/json", "x-signature": sign(body, SECRET)}
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(served.url + "/webhooks/q7m2xk", content=body, headers=headers)


async def test_slow_headers_neither_starve_a_real_request_nor_stay_open(served: Served) -> None:
    slow = await crowd(
        served.port,
        b"POST /webhooks/q7m2xk HTTP/1.1\r\nHost: relay\r\n",
        b"X-Pad: 1\r\n",
        SLOW_CLIENTS,
    )
    response = await legitimate(served)
    assert response.status_code == 200, response.text

    def all_closed() -> bool:
        return all(c.closed for c in slow)

    await eventually(all_closed, "every slow client to be disconnected", timeout=20)
    timed_out = [c for c in slow if c.received.startswith(b"HTTP/1.1 408 ")]
    assert timed_out, "the clients still there at the deadline are told 408"
    assert (await legitimate(served)).status_code == 200  # a duplicate: still served


async def test_a_body_sent_too_slowly_is_cut_off_with_408(served: Served) -> None:
    head = (
        b"POST /webhooks/q7m2xk HTTP/1.1\r\nHost: relay\r\ncontent-type: application/json\r\n"
        b"x-signature: 00\r\ncontent-length: 100000\r\n\r\n{"
    )
    [client] = await crowd(served.port, head, b" ", 1)
    await eventually(lambda: client.closed, "the slow body to be cut off", timeout=10)
    assert client.received.startswith(b"HTTP/1.1 408 "), client.received[:200]


async def test_headers_past_the_size_limit_are_431(served: Served) -> None:
    [client] = await crowd(
        served.port,
        b"GET /healthz HTTP/1.1\r\nHost: relay\r\n",
        b"X-Pad: " + b"a" * 2500 + b"\r\n",
        1,
    )
    await eventually(lambda: client.closed, "the oversized headers to be refused", timeout=10)
    assert client.received.startswith(b"HTTP/1.1 431 "), client.received[:200]
