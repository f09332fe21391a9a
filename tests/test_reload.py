"""Reloading config.yaml in running processes: `relay serve` and `relay worker` as real processes,
SIGHUP and `relay reload` as an admin sends them, deliveries to loopback receivers."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from relay.config import Settings, parse_config
from relay.live_config import needs_restart
from relay.registry import connector_types
from relay.wildix.signature import sign
from tests.fakes.receiver import Receiver
from tests.support.cli import RELAY, free_port, run
from tests.support.relay import SECRET, call_body
from tests.support.waiting import eventually
from tests.support.worker_log import WorkerLog

TOKEN = "reload-admin-token-0123456789"
NEW_KEY = "k3y-added-by-a-reload-5Yq2Lm"


def base_config(db_url: str, out: str) -> dict[str, Any]:
    return {
        "database": {"url": db_url},
        "server": {"host": "127.0.0.1", "port": free_port()},
        "admin": {"token": TOKEN, "secure_cookies": False},
        "delivery": {"schedule": ["0.2s"], "timeout": "5s", "jitter": 0},
        "dispatch": {"poll_interval": "0.1s", "lease": "2s", "shutdown_grace": "2s"},
        "logging": {"level": "INFO", "format": "json"},
        "connectors": {"out": {"type": "webhook", "url": out + "/out"}},
        "integrations": {
            "q7m2xk": {"secret": SECRET, "routes": [{"connector": "out"}]},
        },
    }


def save(path: Path, data: dict[str, Any]) -> str:
    """Write the file; its version as relay reports it."""
    text = yaml.safe_dump(data)
    path.write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def logged(lines: list[str], message: str) -> list[dict[str, Any]]:
    found = [json.loads(x) for x in lines if x.startswith("{")]
    return [x for x in found if x.get("message", "").startswith(message)]


@contextlib.contextmanager
def started(config: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], WorkerLog]]:
    """A `relay …` process with its log read as it comes; SIGTERM at the end."""
    proc = subprocess.Popen(
        [*RELAY, "--config", str(config), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log = WorkerLog(proc)
    try:
        yield proc, log
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class Admin:
    """The running serve's webhook and admin API, as Wildix and an admin use them."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.AsyncClient(
            base_url=self.url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30
        )

    async def ready(self, proc: subprocess.Popen[bytes], log: WorkerLog) -> None:
        """Until /readyz answers 200; fails with the log if the process exited first."""

        async def up() -> bool:
            if proc.poll() is not None:
                tail = "\n".join(log.lines[-20:])
                raise AssertionError(f"relay exited ({proc.returncode}) before ready:\n{tail}")
            try:
                return (await self.http.get("/readyz")).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(up, "relay serve to be ready", timeout=60)

    async def send(self, integration: str, call_id: str) -> httpx.Response:
        envelope = json.loads(call_body(call_id))
        envelope["integrationId"] = integration
        body = json.dumps(envelope).encode()
        headers = {"content-type": "application/json", "x-signature": sign(body, SECRET)}
        return await self.http.post(f"/webhooks/{integration}", content=body, headers=headers)

    async def get(self, path: str) -> Any:
        answer = await self.http.get(path)
        assert answer.status_code == 200, answer.text
        return answer.json()

    async def deliveries(self, connector: str) -> list[dict[str, Any]]:
        return (await self.get(f"/api/v1/deliveries?connector={connector}"))["items"]

    async def connector(self, name: str) -> dict[str, Any] | None:
        found = [c for c in await self.get("/api/v1/connectors") if c["name"] == name]
        return found[0] if found else None

    async def version(self) -> str:
        return (await self.get("/api/v1/config"))["version"]


def sighup_line(log: WorkerLog, version: str) -> Any:
    """The `config loaded` line of this version, once written."""
    lines = [x for x in logged(log.lines, "config loaded") if x.get("version") == version]
    return lines[0] if lines else None


async def test_serve_reloads_on_sighup_and_relay_reload(db_url: str, tmp_path: Path) -> None:
    async with Receiver() as out, Receiver() as crm:
        crm.respond(503)  # crm's first attempt fails: its delivery waits an hour, pending
        data = base_config(db_url, out.url)
        data["connectors"]["crm"] = {
            "type": "webhook",
            "url": crm.url + "/crm",
            "delivery": {"schedule": ["1h"]},
        }
        data["integrations"]["q7m2xk"]["routes"].append({"connector": "crm"})
        config = tmp_path / "config.yaml"
        first = save(config, data)
        with started(config, "serve") as (proc, log):
            api = Admin(data["server"]["port"])
            await api.ready(proc, log)
            shown = await api.get("/api/v1/config")
            assert (shown["version"], shown["path"]) == (first, str(config))

            assert (await api.send("q7m2xk", "call-1")).json()["deliveries"] == 2
            await out.wait_for(1, timeout=30)
            await crm.wait_for(1, timeout=30)

            async def crm_pending() -> Any:
                rows = await api.deliveries("crm")
                done = rows and (rows[0]["attempts"], rows[0]["state"]) == (1, "pending")
                return rows if done else None

            [pending] = await eventually(crm_pending, "crm's failed attempt to be recorded")
            assert pending["last_error"]

            # SIGHUP: a new integration, and crm removed with its delivery pending
            second_data = copy.deepcopy(data)
            del second_data["connectors"]["crm"]
            second_data["integrations"]["q7m2xk"]["routes"] = [{"connector": "out"}]
            second_data["integrations"]["n8x4wz"] = {
                "secret": SECRET,
                "routes": [{"connector": "out"}],
            }
            second = save(config, second_data)
            assert (await api.send("n8x4wz", "call-2")).status_code == 404  # not loaded yet
            proc.send_signal(signal.SIGHUP)
            line = await eventually(lambda: sighup_line(log, second), "the reload's log line")
            assert (line["added"], line["removed"], line["changed"]) == ([], ["crm"], [])
            assert await api.version() == second

            sent = await api.send("n8x4wz", "call-3")
            assert sent.status_code == 200 and sent.json()["deliveries"] == 1
            await out.wait_for(2, timeout=30)

            # crm's delivery stays pending, shown as not configured; due now, still unclaimed
            gone = await api.connector("crm")
            assert gone is not None and gone["configured"] is False
            assert gone["counts"]["pending"] == 1
            async with dashboard(api) as ui:
                panel = (await ui.get("/overview/panel")).text
                assert re.search(r"<td>crm</td>\s*<td><span[^>]*>not configured</span>", panel)
                assert f"config {second} · loaded " in (await ui.get("/")).text
            retried = await api.http.post(f"/api/v1/deliveries/{pending['id']}/retry")
            assert retried.status_code == 200, retried.text
            await api.send("n8x4wz", "call-4")
            await out.wait_for(
                3, timeout=30
            )  # the dispatcher claimed after the retry made crm's due
            [still] = await api.deliveries("crm")
            assert (still["state"], still["attempts"]) == ("pending", 1)
            assert len(crm.requests) == 1

            # a broken file is refused with its key path; the old config keeps serving
            broken = copy.deepcopy(second_data)
            broken["connectors"]["out"]["urll"] = out.url
            save(config, broken)
            refused = run("reload", config=config)
            assert refused.returncode == 1
            assert "$.connectors.out.urll: unknown key" in refused.stderr
            assert f"config {second} stays in force" in refused.stderr
            [why] = await eventually(
                lambda: logged(log.lines, "config reload refused"), "the refusal's log line"
            )
            assert why["key"] == "$.connectors.out.urll"
            assert await api.version() == second
            assert (await api.send("n8x4wz", "call-5")).status_code == 200
            await out.wait_for(4, timeout=30)

            # a key only a restart applies: refused, named
            moved = copy.deepcopy(second_data)
            moved["server"]["port"] = free_port()
            save(config, moved)
            answer = await api.http.post("/api/v1/config/reload")
            assert answer.status_code == 422
            assert (answer.json()["result"], answer.json()["key"]) == ("refused", "$.server.port")

            # crm back (it answers 200 now): its pending delivery resumes
            third_data = copy.deepcopy(second_data)
            third_data["connectors"]["crm"] = data["connectors"]["crm"]
            third = save(config, third_data)
            loaded = run("reload", config=config)
            assert loaded.returncode == 0, loaded.stderr
            assert loaded.stdout.startswith(f"loaded: config {third}")
            assert "connectors added: crm" in loaded.stdout
            await crm.wait_for(2, timeout=30)

            async def delivered() -> bool:
                [row] = await api.deliveries("crm")
                return row["state"] == "succeeded"

            await eventually(delivered, "crm's delivery to succeed once crm is configured again")
            again = await api.connector("crm")
            assert again is not None and again["configured"] is True

            metrics = (await api.http.get("/metrics")).text
            assert 'relay_config_reloads_total{result="loaded"} 2.0' in metrics
            assert 'relay_config_reloads_total{result="refused"} 2.0' in metrics
            assert f'relay_config_info{{version="{third}"}} 1.0' in metrics
            assert f'version="{second}"' not in metrics
            assert "relay_config_loaded_timestamp_seconds " in metrics
            async with dashboard(api) as ui:
                page = (await ui.get("/")).text
                assert f"config {third} · loaded " in page and "not configured" not in page


@contextlib.asynccontextmanager
async def dashboard(api: Admin) -> AsyncIterator[httpx.AsyncClient]:
    """The dashboard, logged in."""
    async with httpx.AsyncClient(base_url=api.url + "/ui") as ui:
        login = await ui.get("/login")
        csrf = re.search(r'name="_csrf_token" value="([^"]+)"', login.text)
        assert csrf is not None and "config " not in login.text  # no version before logging in
        ok = await ui.post("/login", data={"token": TOKEN, "_csrf_token": csrf[1]})
        assert ok.status_code == 302
        yield ui


async def test_worker_and_serve_reload_a_new_connector(db_url: str, tmp_path: Path) -> None:
    """Scale-out: serve routes to a connector only a reloaded worker can deliver to."""
    async with Receiver() as out, Receiver() as extra:
        data = base_config(db_url, out.url)
        config = tmp_path / "config.yaml"
        save(config, data)
        api = Admin(data["server"]["port"])
        metrics_port = free_port()
        worker_args = ("worker", "--metrics-port", str(metrics_port))
        with started(config, "serve", "--no-dispatch") as (serve, serve_log):
            await api.ready(serve, serve_log)  # the schema is in place before the worker starts
            with started(config, *worker_args) as (worker, log):
                await log.wait_for("dispatcher started")
                data["connectors"]["extra"] = {"type": "webhook", "url": extra.url + "/extra"}
                data["integrations"]["q7m2xk"]["routes"].append({"connector": "extra"})
                version = save(config, data)
                worker.send_signal(signal.SIGHUP)
                line = await eventually(lambda: sighup_line(log, version), "the worker's reload")
                assert line["added"] == ["extra"]
                sent = run("reload", "--pid", str(serve.pid), config=config)
                assert sent.returncode == 0 and f"sent SIGHUP to {serve.pid}" in sent.stdout
                await eventually(lambda: sighup_line(serve_log, version), "serve's reload")

                assert (await api.send("q7m2xk", "call-w1")).json()["deliveries"] == 2
                [got] = await extra.wait_for(1, timeout=30)
                assert got.json()["integrationId"] == "q7m2xk"
                await out.wait_for(1, timeout=30)
                async with httpx.AsyncClient() as http:
                    scraped = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
                assert f'relay_config_info{{version="{version}"}} 1.0' in scraped


async def test_an_attempt_in_flight_finishes_with_the_connector_it_began_with(
    db_url: str, tmp_path: Path
) -> None:
    async with Receiver() as before, Receiver() as after:
        before.delay(3)  # the first attempt is still running when the reload comes
        data = base_config(db_url, before.url)
        data["delivery"]["timeout"] = "60s"
        config = tmp_path / "config.yaml"
        save(config, data)
        with started(config, "serve") as (proc, log):
            api = Admin(data["server"]["port"])
            await api.ready(proc, log)
            await api.send("q7m2xk", "call-f1")
            await before.wait_for(1, timeout=30)
            data["connectors"]["out"]["url"] = after.url + "/out"
            data["connectors"]["out"]["headers"] = {"x-api-key": NEW_KEY}  # a secret new to it
            version = save(config, data)
            answer = await api.http.post("/api/v1/config/reload")
            assert answer.status_code == 200, answer.text
            result = answer.json()
            assert (result["result"], result["version"]) == ("loaded", version)
            assert (result["added"], result["removed"], result["changed"]) == ([], [], ["out"])

            async def first_done() -> bool:
                [row] = await api.deliveries("out")
                return row["state"] == "succeeded"

            await eventually(first_done, "the attempt in flight to succeed where it began")
            assert (len(before.requests), len(after.requests)) == (1, 0)
            assert not logged(log.lines, "delivery")  # no failed attempt logged on the way

            # the new config's secret, echoed back in an error body, is masked where shown
            after.echo(502, text="bad gateway")
            second = (await api.send("q7m2xk", "call-f2")).json()["event_id"]
            [got, _] = await after.wait_for(2, timeout=30)
            assert got.path == "/out" and got.headers["x-api-key"] == NEW_KEY
            assert len(before.requests) == 1
            [row] = [d for d in await api.deliveries("out") if d["event_id"] == second]
            detail = await api.get(f"/api/v1/deliveries/{row['id']}")
            [failed] = [a for a in detail["history"] if a["error"]]
            assert "x-api-key: *****" in failed["error"]
            await eventually(lambda: logged(log.lines, "delivery retry"), "the retry's log line")
            assert NEW_KEY not in "\n".join(log.lines)


def test_a_change_only_a_restart_applies_is_named() -> None:
    """SQS consumers hold their queue from start-up: adding or editing one is refused."""
    queue = {"queue_url": "https://sqs.eu-west-1.amazonaws.com/1/q", "signing_secret": SECRET}
    base = {"integrations": {"q7m2xk": {"secret": SECRET}}}
    sqs = copy.deepcopy(base)
    sqs["integrations"]["s1"] = {"transport": "sqs", "sqs": queue}
    other = copy.deepcopy(sqs)
    other["integrations"]["s1"]["sqs"]["wait_time"] = 5
    logs = copy.deepcopy(base) | {"logging": {"level": "DEBUG"}}

    def parsed(data: dict[str, Any]) -> Settings:
        return parse_config(yaml.safe_dump(data), connector_types=connector_types(), env={})

    cases = [(base, sqs), (sqs, base), (sqs, other), (base, logs)]
    named = [needs_restart(parsed(a), parsed(b)) for a, b in cases]
    assert [e.path if e else None for e in named] == [
        "$.integrations.s1.sqs",
        "$.integrations.s1.sqs",
        "$.integrations.s1.sqs",
        "$.logging.level",
    ]
    routes = copy.deepcopy(sqs)
    routes["integrations"]["s1"]["routes"] = []
    routes["integrations"]["n2"] = {"secret": SECRET}
    assert needs_restart(parsed(sqs), parsed(routes)) is None
