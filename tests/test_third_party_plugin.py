"""A plugin built like a third party would build it: its own pyproject with a `relay` entry point,
installed from a folder; and the same code dropped as a single file into `plugins.dirs`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from relay.registry import connector_types
from tests.fakes.receiver import Receiver
from tests.support.relay import SECRET, make_settings, run_relay
from tests.support.samples import fixture

PLUGIN = textwrap.dedent(
    '''
    """An example third-party connector: posts a small JSON summary of each call."""
    import click

    from relay import Connector, ConnectorConfig, DeliveryContext, Event, hookimpl


    class EchoConfig(ConnectorConfig):
        url: str
        label: str = "echo"


    class Echo(Connector):
        type = "echo"
        Config = EchoConfig

        async def deliver(self, event: Event, ctx: DeliveryContext) -> None:
            body = {
                "label": self.config.label,
                "type": event.type,
                "call": event.call_id,
                "status": event.call.status if event.call else None,
                "attempt": ctx.attempt,
            }
            ctx.check_response(await ctx.http.post(self.config.url, json=body), "echo")


    @hookimpl
    def register_connectors(register):
        register(Echo)


    @hookimpl
    def register_commands(cli):
        @cli.command("echo-hello")
        def hello():
            """Say hello from the plugin."""
            click.echo("hello from relay-echo")
    '''
)

PYPROJECT = textwrap.dedent(
    """
    [build-system]
    requires = ["setuptools>=61"]
    build-backend = "setuptools.build_meta"

    [project]
    name = "relay-echo"
    version = "0.1.0"

    [project.entry-points.relay]
    echo = "relay_echo"
    """
)


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pip-install the plugin into its own folder (kept off the test venv's site-packages)."""
    src = tmp_path_factory.mktemp("relay-echo")
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "relay_echo.py").write_text(PLUGIN)
    site = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(site),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    return site


async def test_installed_plugin_is_loaded_and_receives_deliveries(
    installed_plugin: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(installed_plugin))
    assert "echo" in connector_types()
    async with Receiver() as receiver:
        settings = make_settings(
            db_url, {"mine": {"type": "echo", "url": receiver.url, "label": "third-party"}}
        )
        async with run_relay(settings) as relay:
            assert (await relay.post(fixture("call_completed_missed_inbound"))).status_code == 200
            [delivery] = await relay.settled()
            assert delivery.state == "succeeded"
        [got] = receiver.requests
        assert yaml.safe_load(got.body) == {
            "label": "third-party",
            "type": "call:completed",
            "call": "it_w204517_1764415002.91",
            "status": "missed",
            "attempt": 1,
        }


def test_installed_plugin_shows_in_relay_plugins_and_adds_a_command(
    installed_plugin: Path, tmp_path: Path
) -> None:
    config = tmp_path / "relay.yaml"
    config.write_text(yaml.safe_dump({"integrations": {"q7m2xk": {"secret": SECRET}}}))
    env = {**os.environ, "PYTHONPATH": str(installed_plugin)}
    listed = subprocess.run(
        [sys.executable, "-m", "relay", "--config", str(config), "plugins"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert "echo: relay_echo.Echo" in listed.stdout
    hello = subprocess.run(
        [sys.executable, "-m", "relay", "echo-hello"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert hello.stdout.strip() == "hello from relay-echo"


async def test_single_file_plugin_from_plugins_dirs(tmp_path: Path, db_url: str) -> None:
    folder = tmp_path / "my-plugins"
    folder.mkdir()
    (folder / "echo_file.py").write_text(PLUGIN.replace('type = "echo"', 'type = "echo-file"'))
    async with Receiver() as receiver:
        settings = make_settings(
            db_url,
            {"mine": {"type": "echo-file", "url": receiver.url}},
            plugin_dirs=[str(folder)],
        )
        async with run_relay(settings) as relay:
            await relay.post(fixture("call_completed"))
            [delivery] = await relay.settled()
            assert delivery.state == "succeeded"
        assert yaml.safe_load(receiver.requests[0].body)["label"] == "echo"
