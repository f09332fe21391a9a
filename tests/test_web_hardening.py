"""The HTTP surface facing a hostile world, over real HTTP: every 5xx logged with a request id,
readiness that means "can store", the schema behind the token, the dashboard's browser-side
protections, login throttling and logout that really ends a session."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from relay import logs
from relay.admin.auth import PER_CLIENT, FailureThrottle
from relay.store import db
from tests.support.databases import PG_URL
from tests.support.operations import AUTH, TOKEN, admin_settings
from tests.support.relay import RunningRelay, make_settings, run_relay

LOG_CONNECTOR = {"out": {"type": "log"}}
INLINE_CODE = re.compile(r"<script(?![^>]*\bsrc=)|<style|\sstyle=|\son\w+=")


@pytest.fixture
def log_buffer() -> Iterator[io.StringIO]:
    """relay's JSON log lines, captured; the test's own logging setup comes back afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    buffer = io.StringIO()
    logs.configure("INFO", "json", stream=buffer)
    yield buffer
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def log_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


async def test_an_unexpected_error_is_a_logged_json_500_with_the_request_id(
    db_url: str, log_buffer: io.StringIO
) -> None:
    async with run_relay(admin_settings(db_url, LOG_CONNECTOR), dispatch=False) as relay:
        async with relay.store.engine.begin() as conn:  # the admin API's query now fails
            await conn.execute(text("DROP TABLE rejections"))
        url = relay.url + "/api/v1/rejections"
        response = await relay.client.get(url, headers={**AUTH, "x-request-id": "case-17.a"})
        assert response.status_code == 500
        assert response.headers["x-request-id"] == "case-17.a"
        assert response.json()["request_id"] == "case-17.a"
        assert "rejections" not in response.text  # no internals in the answer
        # an id a client could abuse (too long, odd characters) is replaced by one of ours
        for given in ("x" * 65, "a b", "<script>"):
            other = await relay.client.get(url, headers={**AUTH, "x-request-id": given})
            assert re.fullmatch(r"[0-9a-f]{16,}", other.headers["x-request-id"]), given
            assert other.json()["request_id"] == other.headers["x-request-id"]
        ok = await relay.client.get(relay.url + "/healthz")
        assert re.fullmatch(r"[0-9a-f]{16,}", ok.headers["x-request-id"])
    errors = [r for r in log_lines(log_buffer) if r["level"] == "ERROR"]
    first = next(r for r in errors if r.get("request_id") == "case-17.a")
    assert "/api/v1/rejections" in first["message"]
    assert "Traceback" in first["exc_info"] and "rejections" in first["exc_info"]
    assert len(errors) == 4


@contextlib.asynccontextmanager
async def read_only(db_url: str) -> AsyncIterator[None]:
    """The database refuses writes as it would in the field: an immutable SQLite file (chattr,
    since tests may run as root, which file modes do not stop), or PostgreSQL's read-only
    transaction default (what a replica or an operator's emergency switch gives)."""
    url = make_url(db_url)
    if db.is_sqlite(db_url):
        path = Path(str(url.database))
        subprocess.run(["chattr", "+i", str(path)], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        return
    admin = make_url(PG_URL).set(drivername="postgresql")
    conn = await asyncpg.connect(admin.render_as_string(hide_password=False))
    setting = f'ALTER DATABASE "{url.database}" {{}} default_transaction_read_only'
    try:
        await conn.execute(setting.format("SET") + " = on")
        yield
        await conn.execute(setting.format("RESET"))
    finally:
        await conn.close()


async def test_readyz_is_503_while_the_database_takes_no_writes(db_url: str) -> None:
    settings = make_settings(db_url, LOG_CONNECTOR)
    async with run_relay(settings, dispatch=False) as relay:
        ready = await relay.client.get(relay.url + "/readyz")
        assert ready.status_code == 200, ready.text
    async with read_only(db_url), run_relay(settings, dispatch=False) as relay:
        refused = await relay.client.get(relay.url + "/readyz")
        assert refused.status_code == 503, refused.text
        assert refused.json()["status"] == "unavailable"
        assert "read" in refused.json()["database"].lower()  # says why
    async with run_relay(settings, dispatch=False) as relay:
        assert (await relay.client.get(relay.url + "/readyz")).status_code == 200


async def test_readyz_logs_nothing_when_ready(db_url: str, log_buffer: io.StringIO) -> None:
    async with run_relay(make_settings(db_url, LOG_CONNECTOR), dispatch=False) as relay:
        before = len(log_lines(log_buffer))
        for _ in range(3):
            assert (await relay.client.get(relay.url + "/readyz")).status_code == 200
        assert log_lines(log_buffer)[before:] == []


async def test_the_api_schema_wants_the_admin_token(db_url: str) -> None:
    async with run_relay(admin_settings(db_url, LOG_CONNECTOR), dispatch=False) as relay:
        for path in ("/schema/openapi.json", "/schema/openapi.yaml", "/schema/swagger", "/schema"):
            bare = await relay.client.get(relay.url + path)
            assert bare.status_code == 401, path
        schema = await relay.client.get(relay.url + "/schema/openapi.json", headers=AUTH)
        assert schema.status_code == 200 and "/api/v1/events" in schema.json()["paths"]
    async with run_relay(make_settings(db_url, LOG_CONNECTOR), dispatch=False) as relay:
        response = await relay.client.get(relay.url + "/schema/openapi.json")
        assert response.status_code == 404  # no admin API, nothing to describe


async def log_in(relay: RunningRelay, token: str = TOKEN) -> httpx.Response:
    """The login form as a browser posts it (with the CSRF token the page set)."""
    page = await relay.client.get(relay.url + "/ui/login")
    csrf = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
    assert csrf is not None
    data = {"token": token, "_csrf_token": csrf[1]}
    return await relay.client.post(relay.url + "/ui/login", data=data)


def dashboard_settings(db_url: str) -> Any:
    return admin_settings(db_url, LOG_CONNECTOR, admin={"secure_cookies": False})


async def test_dashboard_pages_allow_no_framing_and_no_foreign_or_inline_code(db_url: str) -> None:
    async with run_relay(dashboard_settings(db_url), dispatch=False) as relay:
        login_page = await relay.client.get(relay.url + "/ui/login")
        assert (await log_in(relay)).status_code == 302
        pages = [login_page]
        for path in ("/ui/", "/ui/events", "/ui/deliveries", "/ui/replay", "/ui/static/relay.css"):
            pages.append(await relay.client.get(relay.url + path))
        for page in pages:
            assert page.status_code == 200, page.url
            h = page.headers
            csp = {d.split()[0]: d.split()[1:] for d in h["content-security-policy"].split("; ")}
            assert csp["default-src"] == ["'self'"] and csp["script-src"] == ["'self'"]
            assert csp["style-src"] == ["'self'"] and csp["frame-ancestors"] == ["'none'"]
            assert h["x-frame-options"] == "DENY" and h["x-content-type-options"] == "nosniff"
            assert h["referrer-policy"] == "no-referrer"
            # what the policy would block must not be needed: no inline script or style
            if page.headers["content-type"].startswith("text/html"):
                assert not INLINE_CODE.search(page.text), page.url
        # the API and ingest are not pages: no dashboard headers there
        api = await relay.client.get(relay.url + "/api/v1/events", headers=AUTH)
        assert "content-security-policy" not in api.headers


async def test_wrong_logins_are_throttled_and_then_even_the_right_token_waits(
    db_url: str,
) -> None:
    async with run_relay(dashboard_settings(db_url), dispatch=False) as relay:
        for _ in range(PER_CLIENT):
            assert (await log_in(relay, "not-the-token")).status_code == 401
        locked = await log_in(relay, "not-the-token")
        assert locked.status_code == 429
        assert 0 < int(locked.headers["retry-after"]) <= 300
        right = await log_in(relay)
        assert right.status_code == 429 and "Try again in" in right.text
        assert (await relay.client.get(relay.url + "/ui/")).status_code == 302  # not logged in


async def test_wrong_admin_api_tokens_are_throttled_with_the_dashboards_budget(
    db_url: str,
) -> None:
    async with run_relay(dashboard_settings(db_url), dispatch=False) as relay:
        url = relay.url + "/api/v1/events"
        wrong = {"authorization": "Bearer not-the-token"}
        assert (await log_in(relay, "not-the-token")).status_code == 401  # counts too
        for _ in range(PER_CLIENT - 2):
            assert (await relay.client.get(url, headers=wrong)).status_code == 401
        assert (await relay.client.get(relay.url + "/schema/openapi.json")).status_code == 401
        for headers in (wrong, AUTH):
            locked = await relay.client.get(url, headers=headers)
            assert locked.status_code == 429
            assert 0 < int(locked.headers["retry-after"]) <= 300
        assert (await relay.client.get(relay.url + "/schema", headers=AUTH)).status_code == 429
        assert (await log_in(relay)).status_code == 429


def test_failure_throttle_limits_each_client_and_all_of_them_in_bounded_memory() -> None:
    now = [0.0]
    throttle = FailureThrottle(per_client=3, overall=5, window=60, clients=4, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.retry_after("a") == 0
        throttle.failed("a")
    assert throttle.retry_after("a") == 60 and throttle.retry_after("b") == 0
    now[0] = 30.0
    throttle.failed("b")
    throttle.failed("c")  # five failures in the window, from three clients: everyone waits
    assert throttle.retry_after("d") == 30 and throttle.retry_after(None) == 30
    now[0] = 60.5  # a's failures aged out: the overall window has two left
    assert throttle.retry_after("a") == 0 and throttle.retry_after("d") == 0
    for n in range(1000):  # many addresses: remembered ones stay within the bound
        throttle.failed(f"10.0.{n // 256}.{n % 256}")
    assert len(throttle._clients) <= 4


async def test_logout_ends_the_session_for_every_copy_of_its_cookie(db_url: str) -> None:
    async with run_relay(dashboard_settings(db_url), dispatch=False) as relay:
        assert (await log_in(relay)).status_code == 302
        stolen = relay.client.cookies["relay_session"]
        assert (await relay.client.get(relay.url + "/ui/")).status_code == 200
        header = {"x-csrftoken": relay.client.cookies["relay_csrf"]}
        assert (await relay.client.post(relay.url + "/ui/logout", headers=header)).is_redirect
        async with httpx.AsyncClient(cookies={"relay_session": stolen}) as other:
            replayed = await other.get(relay.url + "/ui/")
            assert replayed.status_code == 302
            assert replayed.headers["location"] == "/ui/login"
