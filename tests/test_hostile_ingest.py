"""Unauthenticated requests cost bounded memory, rows, log bytes and API bytes, whatever they
carry; a body over ``server.max_body_size`` is a clean 413 from a real `relay serve` process."""

from __future__ import annotations

import gc
import io
import os
import re
import socket
import subprocess
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from prometheus_client import REGISTRY

from relay.ingest.accept import RECORD_BURST, RECORD_RATE
from relay.store.records import UNSIGNED_EXCERPT
from relay.store.tables import rejections, utcnow
from tests.support.cli import RELAY, free_port, write
from tests.support.operations import AUTH, TOKEN, admin_settings
from tests.support.relay import capture_log, config_dict, make_settings, run_relay

MB = 2**20
# Every row of a list, whatever was stored: its fields are read at bounded widths.
ROW_BUDGET = 6000  # bytes of JSON per listed rejection


def unsigned(integration_id: str) -> bytes:
    return msgspec.json.encode({"integrationId": integration_id, "type": "call:completed"})


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """What relay's JSON log handler would write, for the ingest logger."""
    with capture_log("relay.ingest") as out:
        yield out


async def test_many_unknown_ids_leave_no_trace_in_memory(db_url: str) -> None:
    """Distinct client-chosen ids must not accumulate in any structure of the process."""
    settings = make_settings(db_url, {"out": {"type": "log"}})
    async with run_relay(settings, dispatch=False) as relay:
        await relay.client.post(relay.url + "/webhooks", content=unsigned("warm-up"))
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for n in range(150):
                r = await relay.client.post(
                    relay.url + "/webhooks", content=unsigned(f"{n:06d}" + "x" * 100_000)
                )
                assert r.status_code == 404
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert grown < 3 * MB, f"{grown / MB:.1f} MiB kept after 150 ids of 100 KB"


async def test_a_megabyte_id_is_cut_in_the_table_the_log_and_the_metrics(
    db_url: str, json_log: io.StringIO
) -> None:
    settings = make_settings(
        db_url, {"out": {"type": "log"}}, extra={"server": {"max_body_size": 2 * MB}}
    )
    huge = "A" * MB
    path_id = "P" * 60_000
    agent = "U" * 8_000
    async with run_relay(settings, dispatch=False) as relay:
        body = unsigned(huge)
        r = await relay.client.post(
            relay.url + "/webhooks", content=body, headers={"user-agent": agent}
        )
        assert r.status_code == 404
        r = await relay.client.post(relay.url + f"/webhooks/{path_id}", content=b"{}")
        assert r.status_code == 404
        by_body, by_path = sorted(await relay.rows(rejections), key=lambda row: row.id)

    assert by_body.integration_id == "A" * 31 + f"… ({MB} chars)"
    assert by_path.integration_id == "P" * 31 + "… (60000 chars)"
    assert len(by_body.body_excerpt) == UNSIGNED_EXCERPT
    assert by_body.transport_meta["body_size"] == len(body)
    assert len(by_body.transport_meta["user_agent"]) <= 255
    assert len(by_path.transport_meta["path"]) <= 255
    lines = json_log.getvalue().splitlines()
    assert len(lines) == 2 and all(len(line) < 1000 for line in lines), lines
    labels = {
        value
        for metric in REGISTRY.collect()
        if metric.name == "relay_events_received"
        for sample in metric.samples
        for value in sample.labels.values()
    }
    assert max(len(v) for v in labels) <= 64


def refused_unknown() -> float:
    labels = {"integration": "unknown", "type": "", "outcome": "rejected"}
    return REGISTRY.get_sample_value("relay_events_received_total", labels) or 0.0


async def test_a_flood_is_counted_but_recorded_at_a_bounded_rate(db_url: str) -> None:
    settings = make_settings(db_url, {"out": {"type": "log"}})
    sent = RECORD_BURST + 150
    async with run_relay(settings, dispatch=False) as relay:
        counted = refused_unknown()
        started = time.monotonic()
        for n in range(sent):
            r = await relay.client.post(relay.url + "/webhooks", content=unsigned(f"flood-{n}"))
            assert r.status_code == 404
        elapsed = time.monotonic() - started
        recorded = len(await relay.rows(rejections))
    assert refused_unknown() - counted == sent
    assert recorded <= RECORD_BURST + RECORD_RATE * elapsed + 1


async def test_the_table_keeps_at_most_its_cap(db_url: str) -> None:
    settings = make_settings(db_url, {"out": {"type": "log"}})
    async with run_relay(settings, dispatch=False) as relay:
        ids = [
            await relay.store.record_rejection(transport="webhook", reason=f"r{n}", keep=5)
            for n in range(12)
        ]
        assert sorted(r.id for r in await relay.rows(rejections)) == ids[-5:]


async def test_the_rejections_list_stays_small_whatever_rows_hold(db_url: str) -> None:
    """Rows written before fields were cut hold a client's megabytes on SQLite (which enforces
    no width; PostgreSQL does): a page still answers a bounded number of bytes."""
    rows = 12
    settings = admin_settings(db_url, {"out": {"type": "log"}}, admin={"secure_cookies": False})
    async with run_relay(settings, dispatch=False) as relay:
        wide = relay.store.engine.dialect.name == "sqlite"
        hostile = {
            "received_at": utcnow(),
            "transport": "webhook",
            "integration_id": "I" * (MB if wide else 64),
            "reason": "\u2028" * (100_000 if wide else 255),
            "status_code": 404,
            "remote": '"' * (100_000 if wide else 255),
            "body_sha256": None,
            "body_excerpt": b"\x00\xff" * 100_000,
            "transport_meta": {"path": "/webhooks/" + "I" * 1000},
        }
        async with relay.store.engine.begin() as conn:
            await conn.execute(rejections.insert(), [hostile] * rows)
        response = await relay.client.get(
            relay.url + "/api/v1/rejections", params={"limit": 500}, headers=AUTH
        )
        assert response.status_code == 200
        assert len(response.content) < rows * ROW_BUDGET, len(response.content)
        items = response.json()["items"]
        assert len(items) == rows
        assert all(len(item["integration_id"]) <= 64 for item in items)
        login = await relay.client.get(relay.url + "/ui/login")
        csrf = re.search(r'name="_csrf_token" value="([^"]+)"', login.text)
        assert csrf is not None
        form = {"token": TOKEN, "_csrf_token": csrf[1]}
        await relay.client.post(relay.url + "/ui/login", data=form)
        page = await relay.client.get(relay.url + "/ui/rejections")
        assert page.status_code == 200 and "Rejected requests" in page.text
        assert page.text.count("<tr>") == rows + 1  # the header's
        assert len(page.content) < rows * ROW_BUDGET, len(page.content)


# -- 413 from a real process -----------------------------------------------------------------


@pytest.fixture
def relay_serve(tmp_path: Path) -> Iterator[int]:
    """`relay serve` as deployed (uvicorn, httptools), on SQLite; yields its port."""
    port = free_port()
    data = config_dict(f"sqlite+aiosqlite:///{tmp_path}/relay.db", {"out": {"type": "log"}})
    data["server"] = {"host": "127.0.0.1", "port": port}
    data["logging"] = {"level": "WARNING", "format": "json"}
    config = write(tmp_path / "relay.yaml", data)
    proc = subprocess.Popen(
        [*RELAY, "--config", str(config), "serve", "--no-dispatch"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "relay serve not ready"
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def post_3mib(port: int, *, close: bool, chunked: bool) -> str:
    """The status line a client reads after sending all 3 MiB, or the error it got instead.

    A small send buffer means the client is still sending when relay has answered: what a
    client on a real network sees."""
    body = b"x" * (3 * MB)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
        head = (
            b"POST /webhooks/q7m2xk HTTP/1.1\r\nhost: relay\r\ncontent-type: application/json\r\n"
        )
        if close:
            head += b"connection: close\r\n"
        try:
            if chunked:
                s.sendall(head + b"transfer-encoding: chunked\r\n\r\n")
                for at in range(0, len(body), 65536):
                    part = body[at : at + 65536]
                    s.sendall(b"%x\r\n%s\r\n" % (len(part), part))
                s.sendall(b"0\r\n\r\n")
            else:
                s.sendall(head + b"content-length: %d\r\n\r\n" % len(body) + body)
            answer = b""
            while b"\r\n" not in answer:
                got = s.recv(4096)
                if not got:
                    return f"closed after {answer!r}"
                answer += got
        except OSError as exc:
            return type(exc).__name__
    return answer.split(b"\r\n", 1)[0].decode()


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_3_mib_is_a_clean_413_even_on_a_closing_connection(relay_serve: int, chunked: bool) -> None:
    seen = [
        post_3mib(relay_serve, close=close, chunked=chunked)
        for close in (True, False, True, True, False, True)
    ]
    assert seen == ["HTTP/1.1 413 Request Entity Too Large"] * len(seen)
