"""`relay events|deliveries|replay` as an admin runs them: real processes on the database, no
server running; a service started afterwards carries out what they queued."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import yaml
from click.testing import CliRunner

from relay.admin.filters import EventFilter
from relay.admin.queries import Queries
from relay.cli import main
from relay.wildix import parse
from tests.fakes.receiver import Receiver
from tests.support.cli import free_port, relay_cli
from tests.support.operations import admin_settings, wait_state, webhook
from tests.support.relay import call_body, config_dict, run_relay
from tests.support.samples import fixture
from tests.support.waiting import eventually


def relay_process(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_list_show_retry_and_replay_from_the_command_line(
    db_url: str, tmp_path: Path
) -> None:
    async with Receiver() as receiver:
        receiver.respond(400, body="no such owner")
        settings = admin_settings(db_url, {"crm": webhook(receiver)})
        config = tmp_path / "relay.yaml"
        config.write_text(yaml.safe_dump(config_dict(db_url, {"crm": webhook(receiver)})))
        async with run_relay(settings) as relay:
            first = (await relay.post(call_body("cli-1"))).json()["event_id"]
            second = (await relay.post(fixture("call_completed_missed_inbound"))).json()["event_id"]
            sms = (await relay.post(fixture("sms_status"))).json()["event_id"]
            rows = await relay.settled()
        dead = next(r for r in rows if r.event_id == first)
        assert dead.state == "dead"

        # the service is down from here on: the commands work on the database alone
        listed = await relay_cli(config, "events", "list", "--type", "call:*", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [e["id"] for e in json.loads(listed.stdout)["items"]] == [second, first]
        by_phone = await relay_cli(config, "events", "list", "--phone", "+33 1 42 68 53 00")
        header, row = by_phone.stdout.splitlines()
        assert header.split()[:4] == ["ID", "RECEIVED", "(UTC)", "INTEGR."]
        assert header.split()[4:] == ["TYPE", "CALL", "DELIVERIES"]
        assert row.split()[0] == str(second) and row.endswith("succeeded:1")
        paged = await relay_cli(config, "events", "list", "--limit", "1")
        assert paged.stdout.splitlines()[1].split()[0] == str(sms)
        assert f"--cursor {sms}" in paged.stderr
        none = await relay_cli(config, "events", "list", "--integration", "nope")
        assert (none.returncode, none.stdout) == (0, "no events match\n")

        shown = await relay_cli(config, "events", "show", str(first))
        assert shown.returncode == 0, shown.stderr
        assert f"delivery {dead.id} → crm: dead after 1 attempt\n" in shown.stdout
        assert "#1" in shown.stdout and "dead HTTP 400" in shown.stdout
        assert '"remote_number": "+442071838750"' in shown.stdout  # the normalized view
        assert '"id": "cli-1"' in shown.stdout  # the raw body
        missing = await relay_cli(config, "events", "show", "9999")
        assert missing.returncode == 1 and "no event 9999" in missing.stderr

        dead_list = await relay_cli(config, "deliveries", "list", "--state", "dead", "--json")
        assert [d["id"] for d in json.loads(dead_list.stdout)["items"]] == [dead.id]
        dead_text = await relay_cli(config, "deliveries", "list", "--state", "dead")
        header, row = dead_text.stdout.splitlines()
        assert header.split()[:6] == ["ID", "EVENT", "CONNECTOR", "STATE", "ATTEMPTS", "UPDATED"]
        assert row.split()[:5] == [str(dead.id), str(first), "crm", "dead", "1"]
        empty = await relay_cli(config, "deliveries", "list", "--state", "cancelled")
        assert (empty.returncode, empty.stdout) == (0, "no deliveries match\n")
        empty_json = await relay_cli(config, "deliveries", "list", "--connector", "x", "--json")
        assert json.loads(empty_json.stdout)["items"] == []
        retried = await relay_cli(config, "deliveries", "retry", str(dead.id))
        assert retried.returncode == 0 and f"delivery {dead.id}: due now" in retried.stdout
        refused = await relay_cli(config, "deliveries", "retry", "424242")
        assert refused.returncode == 1 and "no delivery 424242" in refused.stderr

        dry = await relay_cli(config, "replay", "--type", "call:*", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "2 events matched; would create 2 deliveries" in dry.stdout
        # `--config` is accepted after the command as well
        after = await asyncio.to_thread(
            CliRunner().invoke, main, ["replay", "--call-id", "nope", "--config", str(config)]
        )
        assert (after.exit_code, after.stdout) == (0, "0 events matched; created 0 deliveries\n")
        real = await relay_cli(config, "replay", "--call-id", "cli-1")
        assert "1 event matched; created 1 delivery" in real.stdout
        vague = await relay_cli(config, "replay")
        assert vague.returncode == 1 and "at least one filter" in vague.stderr

        # the service comes back and carries out the retry and the replay
        async with run_relay(settings) as relay:
            await wait_state(relay, dead.id, "succeeded")
            replayed = max(r.id for r in await relay.deliveries())
            await wait_state(relay, replayed, "succeeded")
        assert [r.body for r in receiver.requests].count(call_body("cli-1")) == 3
    # the attempt history numbers on across the manual retry, which it shows between them
    shown = await relay_cli(config, "events", "show", str(first))
    history = [line.strip() for line in shown.stdout.splitlines() if line.startswith("  ")]
    assert [line.split()[0] for line in history[:3]] == ["#1", "manual", "#2"]
    assert "dead HTTP 400" in history[0] and "succeeded" in history[2]
    assert history[1].endswith(f"by CLI ({getpass.getuser()})")


async def test_a_large_replay_shows_progress_and_creates_every_delivery(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/big.db"
    settings = admin_settings(url, {"out": {"type": "log"}})
    config = tmp_path / "relay.yaml"
    config.write_text(yaml.safe_dump(config_dict(url, {"out": {"type": "log"}})))
    async with run_relay(settings, dispatch=False) as relay:
        for i in range(600):
            body = call_body(f"bulk-{i}")
            await relay.store.record(parse(body), [], transport="webhook")
    replay = relay_process(config, "replay", "--integration", "q7m2xk")
    assert replay.returncode == 0, replay.stderr
    assert "replaying" in replay.stderr  # click's progress bar (label only when not a tty)
    assert "600 events matched; created 600 deliveries" in replay.stdout
    async with run_relay(settings, dispatch=False) as relay:
        page = await Queries(relay.store, settings).events(EventFilter(status="pending"), limit=500)
        assert len(page.items) == 500 and page.next_cursor == str(page.items[-1].id)
        assert len(await relay.deliveries()) == 600


async def test_worker_exports_its_counters_and_stops_cleanly(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/w.db"
    async with Receiver() as receiver:
        settings = admin_settings(url, {"crm": webhook(receiver)})
        async with run_relay(settings, dispatch=False) as relay:
            await relay.post(fixture("call_completed"))
        config = tmp_path / "relay.yaml"
        config.write_text(yaml.safe_dump(config_dict(url, {"crm": webhook(receiver)})))
        port = free_port()
        args = ["--config", str(config), "worker", "--metrics-port", str(port)]
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", *args, stderr=subprocess.PIPE
        )
        try:
            await receiver.wait_for(1, timeout=30)
            async with httpx.AsyncClient() as client:

                async def counted() -> bool:
                    line = 'relay_deliveries_total{connector="crm",outcome="succeeded"} 1.0'
                    with contextlib.suppress(httpx.HTTPError):
                        return line in (await client.get(f"http://127.0.0.1:{port}/metrics")).text
                    return False

                await eventually(counted, "the worker's metrics to show the delivery", timeout=30)
        finally:
            worker.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(worker.communicate(), 30)
        assert worker.returncode == 0, stderr.decode()
