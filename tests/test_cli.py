"""The `relay` command as a user runs it: real processes, real ports."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import click
import httpx
import pytest
import yaml
from click.testing import CliRunner

from relay.cli import main
from relay.store import db
from tests.support.cli import RELAY, free_port, relay_cli, run, write
from tests.support.crm import HUBSPOT
from tests.support.crm import running as crm_running
from tests.support.databases import PG_URL, postgres_database
from tests.support.relay import SECRET


def demo_config(tmp_path: Path, db_url: str, port: int) -> dict:
    return {
        "database": {"url": db_url},
        "server": {"host": "127.0.0.1", "port": port},
        "connectors": {
            "demo-log": {"type": "log"},
            "demo-file": {"type": "file", "path": str(tmp_path / "events.jsonl")},
        },
        "integrations": {
            "q7m2xk": {
                "secret": SECRET,
                "routes": [
                    {"connector": "demo-log", "events": ["*"]},
                    {"connector": "demo-file", "events": ["call:*"]},
                ],
            }
        },
    }


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, int, subprocess.Popen[str]]]:
    port = free_port()
    config = write(
        tmp_path / "relay.yaml",
        demo_config(tmp_path, f"sqlite+aiosqlite:///{tmp_path}/relay.db", port),
    )
    proc = subprocess.Popen(
        [*RELAY, "--config", str(config), "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise AssertionError(f"relay serve did not become ready:\n{proc.stdout.read()}")
    yield config, port, proc
    proc.terminate()
    proc.wait(timeout=20)


def test_send_test_reaches_serve_the_store_and_the_connectors(
    served: tuple[Path, int, subprocess.Popen[str]], tmp_path: Path
) -> None:
    config, port, proc = served
    result = run("send-test", "q7m2xk", "--fixture", "call_completed_missed_inbound", config=config)
    assert result.returncode == 0, result.stderr
    assert f"POST http://127.0.0.1:{port}/webhooks/q7m2xk → 200" in result.stdout
    assert '"status":"accepted"' in result.stdout

    lines_file = tmp_path / "events.jsonl"
    deadline = time.monotonic() + 15
    while not (lines_file.exists() and lines_file.read_text().strip()):
        assert time.monotonic() < deadline, "file connector wrote nothing"
        time.sleep(0.1)
    line = json.loads(lines_file.read_text().splitlines()[0])
    assert line["type"] == "call:completed"
    assert line["view"]["call"]["status"] == "missed"
    assert line["view"]["call"]["remote_number"] == "+33142685300"

    # a re-stamped sample is a new event each time; --exact sends the fixture bytes unchanged
    again = run("send-test", "q7m2xk", "--exact", config=config)
    assert again.returncode == 0 and '"status":"accepted"' in again.stdout
    dup = run("send-test", "q7m2xk", "--exact", config=config)
    assert dup.returncode == 0 and '"status":"duplicate"' in dup.stdout

    proc.terminate()
    output, _ = proc.communicate(timeout=20)
    logged = [json.loads(x) for x in output.splitlines() if x.startswith("{")]
    stored = [i for x in logged if x.get("message") == "events stored" for i in x["event_ids"]]
    assert len(stored) == 2 and all(isinstance(i, int) for i in stored)
    delivered = [x for x in logged if x.get("message") == "delivered"]
    assert {x["connector"] for x in delivered} == {"demo-log", "demo-file"}
    assert SECRET not in output


def test_send_test_with_a_wrong_secret_is_refused(
    served: tuple[Path, int, subprocess.Popen[str]], tmp_path: Path
) -> None:
    config, _port, _proc = served
    data = yaml.safe_load(config.read_text())
    data["integrations"]["q7m2xk"]["secret"] = "a-different-secret"
    other = write(tmp_path / "other.yaml", data)
    result = run("send-test", "q7m2xk", config=other)
    assert result.returncode == 1
    assert "→ 401" in result.stdout and "bad signature" in result.stdout


def test_plugins_lists_the_builtin_connector_types(tmp_path: Path) -> None:
    config = write(tmp_path / "relay.yaml", demo_config(tmp_path, "sqlite+aiosqlite:///x.db", 1))
    result = run("plugins", config=config)
    assert result.returncode == 0, result.stderr
    for ctype in (
        "file: relay.plugins.log",
        "log: relay.plugins.log",
        "webhook: relay.plugins.webhook",
    ):
        assert ctype in result.stdout


async def test_postgres_serve_refuses_an_old_schema_until_migrate(tmp_path: Path) -> None:
    if not os.environ.get("RELAY_TEST_DATABASE_URL"):
        pytest.skip("set RELAY_TEST_DATABASE_URL to run against PostgreSQL")
    async with postgres_database(migrate=False) as url:
        config = write(tmp_path / "relay.yaml", demo_config(tmp_path, url, free_port()))
        refused = run("serve", config=config)
        assert refused.returncode == 1
        assert "run `relay migrate` first" in refused.stderr
        migrated = run("migrate", config=config)
        assert migrated.returncode == 0, migrated.stderr
        assert f"migrated empty → {db.head_revision()}" in migrated.stdout
        assert "postgres" in migrated.stdout
        again = run("migrate", config=config)
        assert f"already at {db.head_revision()}" in again.stdout


async def test_check_config_online_asks_each_connector_and_needs_a_migrated_database(
    tmp_path: Path,
) -> None:
    """`check-config --online` runs in relay.runtime like every command: each connector's own
    check against its real (here loopback) service, and a PostgreSQL schema that is not at head
    is named before anything is asked."""
    fake = HUBSPOT.fake()
    async with crm_running(fake) as url:
        block = HUBSPOT.block(fake, url)
        config = demo_config(tmp_path, f"sqlite+aiosqlite:///{tmp_path}/relay.db", free_port())
        config["connectors"]["crm"] = block
        ok = await relay_cli(write(tmp_path / "ok.yaml", config), "check-config", "--online")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "  check crm: ok" in ok.stdout

        config["connectors"]["crm"] = {**block, "token": "pat-na1-wrong-token"}
        bad = await relay_cli(write(tmp_path / "bad.yaml", config), "check-config", "--online")
        assert bad.returncode == 1
        assert "  check crm: FAILED" in bad.stdout
        assert "pat-na1-wrong-token" not in bad.stdout + bad.stderr

    if PG_URL:
        async with postgres_database(migrate=False) as pg:
            config["database"]["url"] = pg
            del config["connectors"]["crm"]
            path = write(tmp_path / "pg.yaml", config)
            empty = await relay_cli(path, "check-config", "--online")
            assert empty.returncode == 1
            assert "run `relay migrate` first" in empty.stdout + empty.stderr


def _commands(group: click.Group, prefix: str = "relay") -> Iterator[tuple[str, click.Command]]:
    for name, command in group.commands.items():
        yield f"{prefix} {name}", command
        if isinstance(command, click.Group):
            yield from _commands(command, f"{prefix} {name}")


def test_every_command_and_option_has_help_text() -> None:
    missing = [
        f"{path} {param.opts[0]}"
        for path, command in _commands(main)
        for param in command.params
        if isinstance(param, click.Option) and not param.help
    ]
    missing += [path for path, command in _commands(main) if not command.help]
    assert missing == []


def test_config_after_the_command_and_a_missing_file_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path / "mine.yaml", demo_config(tmp_path, "sqlite+aiosqlite:///x.db", 1))
    monkeypatch.chdir(tmp_path)  # no config.yaml here
    after = subprocess.run(
        [*RELAY, "plugins", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert after.returncode == 0 and "log: relay.plugins.log" in after.stdout, after.stderr

    default = subprocess.run([*RELAY, "check-config"], capture_output=True, text=True, timeout=60)
    assert default.returncode == 1
    assert f"no configuration file at {tmp_path / 'config.yaml'}" in default.stderr
    assert "the default: config.yaml in the working directory" in default.stderr
    assert "--config PATH" in default.stderr and "RELAY_CONFIG" in default.stderr
    env = {**os.environ, "RELAY_CONFIG": str(tmp_path / "gone.yaml")}
    by_env = subprocess.run(
        [*RELAY, "check-config"], capture_output=True, text=True, timeout=60, env=env
    )
    assert f"no configuration file at {tmp_path / 'gone.yaml'} (given by RELAY_CONFIG)" in (
        by_env.stderr
    )


def test_send_test_lists_the_samples_without_an_integration(tmp_path: Path) -> None:
    listed = CliRunner().invoke(main, ["send-test", "--list"])
    assert listed.exit_code == 0 and "call_completed\n" in listed.stdout
    bare = CliRunner().invoke(main, ["send-test"])
    assert bare.exit_code == 2 and "Missing argument 'INTEGRATION_ID'" in bare.stderr
