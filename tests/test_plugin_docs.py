"""docs/plugins.md stays true: every hook and public name documented, and its example works.

The example plugin is extracted from the guide and run as a plugin-folder file against a real
loopback server, so a guide that drifts from the API fails here, not in a user's hands.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import time
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pluggy
import pytest
import yaml
from relay.plugins.log import FileConnector
from relay.plugins.webhook import WebhookConnector

import relay
from relay import PauseConnector, hookspecs
from relay.config import ConfigError, parse_config
from relay.connector import ConnectorContext, DeliveryContext, Limiters
from relay.registry import PluginError, collect_connectors, connector_types
from relay.store.records import Store
from relay.wildix import parse
from tests.fakes.receiver import Receiver
from tests.support.relay import make_settings, run_relay
from tests.support.samples import fixture_bytes

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "plugins.md"
EXAMPLE = re.compile(r"<!-- example: (\S+) -->\s*\n```\w*\n(.*?)\n```", re.S)
ENV = {"PUSHOVER_TOKEN": "app-token-1", "PUSHOVER_USER": "user-key-1", "WILDIX_SECRET_Q7M2XK": "s"}


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def examples() -> dict[str, str]:
    return {name: body for name, body in EXAMPLE.findall(doc_text())}


def hookspec_names() -> list[str]:
    """Functions carrying pluggy's spec marker for the "relay" project."""
    marker = f"{hookspecs.hookspec.project_name}_spec"
    return sorted(
        name
        for name, obj in vars(hookspecs).items()
        if inspect.isfunction(obj) and hasattr(obj, marker)
    )


def test_every_hookspec_has_its_own_section():
    names = hookspec_names()
    assert "register_connectors" in names  # the parser really finds hookspecs
    text = doc_text()
    missing = [n for n in names if not re.search(rf"^#{{2,6}} `{n}`\s*$", text, re.M)]
    assert missing == [], f"docs/plugins.md needs a '### `name`' section for: {missing}"


def hook_section(name: str) -> str:
    """The guide's text under the hook's heading, up to the next heading."""
    match = re.search(rf"^#{{2,6}} `{name}`\s*$(.*?)(?=^#{{1,6}} |\Z)", doc_text(), re.M | re.S)
    assert match, f"docs/plugins.md needs a '### `{name}`' section"
    return match.group(1)


@pytest.mark.parametrize("name", hookspec_names())
def test_every_hookspec_signature_matches_the_guide(name: str):
    """pluggy passes hook arguments by name: the guide must show the spec's names, in order."""
    params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
    spec = f"{name}({params})"
    section = hook_section(name)
    shown = re.findall(rf"`({name}\([^`]*\))`", section)
    assert shown, f"docs/plugins.md: the `{name}` section does not show `{spec}`"
    assert shown[0] == spec, f"docs/plugins.md shows `{shown[0]}`; the hookspec is `{spec}`"
    examples = re.findall(rf"^def {name}\(([^)]*)\)", section, re.M)
    assert examples, f"docs/plugins.md: the `{name}` section has no example implementation"
    for args in examples:
        names = ", ".join(a.split(":")[0].strip() for a in args.split(",") if a.strip())
        assert f"{name}({names})" == spec, f"docs/plugins.md example `def {name}({args})`"


def test_every_public_class_and_function_is_mentioned():
    public = [
        name
        for name in relay.__all__
        if inspect.isclass(getattr(relay, name)) or inspect.isroutine(getattr(relay, name))
    ]
    assert "Connector" in public and "raise_for_response" in public
    text = doc_text()
    missing = [name for name in public if not re.search(rf"\b{re.escape(name)}\b", text)]
    assert missing == [], f"docs/plugins.md does not mention: {missing}"


# -- the guide's rules hold for the first-party plugins ----------------------------------------


def test_entry_points_in_pyproject_register_the_first_party_types():
    """What `pip install` will expose under the "relay" group registers log, file and webhook."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    modules = project["entry-points"]["relay"]
    pm = pluggy.PluginManager("relay")
    pm.add_hookspecs(hookspecs)
    for name, target in modules.items():
        pm.register(importlib.import_module(target), name=name)
    found = collect_connectors(pm)
    assert {"log", "file", "webhook"} <= set(found)
    assert found["webhook"] is WebhookConnector and found["file"] is FileConnector
    assert all(target == f"relay.plugins.{name}" for name, target in modules.items())
    assert "`relay.plugins.<name>`" in doc_text()  # the guide says where they install


def test_first_party_connectors_import_only_the_public_api():
    """`from relay import ...` only: a connector needing more means the plugin API must grow."""
    offenders = []
    for path in sorted((ROOT / "plugins").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("relay."):
                offenders.append(f"{path.name}: from {node.module}")
            if isinstance(node, ast.Import):
                offenders += [
                    f"{path.name}: import {a.name}" for a in node.names if "relay." in a.name
                ]
    assert offenders == []


# -- the complete example ----------------------------------------------------------------------


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "plugins"
    folder.mkdir()
    code = examples()["relay_pushover.py"]
    (folder / "relay_pushover.py").write_text(code, encoding="utf-8")
    return folder


@pytest.fixture
def types(plugin_dir: Path) -> dict[str, Any]:
    found = connector_types([plugin_dir])
    assert "pushover" in found
    return found


def build(types: dict[str, Any], name: str, **overrides: Any) -> Any:
    """The doc's config.yaml, with overrides (base_url → the fake), through the real loader."""
    data = yaml.safe_load(examples()["config.yaml"])
    data["connectors"]["phone-alerts"].update(overrides)
    data["connectors"] = {name: data["connectors"]["phone-alerts"]}
    data["integrations"]["q7m2xk"]["routes"][0]["connector"] = name
    inst = parse_config(yaml.safe_dump(data), connector_types=types, env=ENV).connectors[name]
    return inst.cls(name, inst.options)


def delivery_ctx(store: Store, http: httpx.AsyncClient, name: str, delivery_id: int) -> Any:
    return DeliveryContext(
        name=name,
        http=http,
        store=store,
        limiters=Limiters(),
        attempt=1,
        delivery_id=delivery_id,
        event_id=delivery_id,
        integration_id="q7m2xk",
        integration_name=None,
    )


def test_example_pyproject_declares_the_entry_point_of_the_example_module():
    project = tomllib.loads(examples()["pyproject.toml"])["project"]
    assert project["entry-points"]["relay"] == {"pushover": "relay_pushover"}


def test_example_config_validates_and_rejects_a_bad_template(types: dict[str, Any]):
    text = examples()["config.yaml"]
    settings = parse_config(text, connector_types=types, env=ENV)
    assert settings.connectors["phone-alerts"].options.token == "app-token-1"
    with pytest.raises(ConfigError, match=r"^\$\.connectors\.alerts: `message`: template error"):
        build(types, "alerts", message="{% if %}")


async def test_example_plugin_announces_a_missed_call_once(types: dict[str, Any], store: Store):
    async with Receiver() as receiver, httpx.AsyncClient() as http:
        ok = '{"status":1,"request":"req-1"}'
        receiver.respond(200, body=ok, headers={"content-type": "application/json"}, times=2)
        conn = build(types, "alerts", base_url=receiver.url)
        plain = ConnectorContext(name="alerts", http=http, store=store, limiters=Limiters())
        await conn.check(plain)

        missed = parse(fixture_bytes("call_completed_missed_inbound.json"))
        await conn.deliver(missed, delivery_ctx(store, http, "alerts", 1))
        await conn.deliver(missed, delivery_ctx(store, http, "alerts", 1))  # a retry
        answered = parse(fixture_bytes("call_completed.json"))
        await conn.deliver(answered, delivery_ctx(store, http, "alerts", 2))

        check, sent = await receiver.wait_for(2)
        assert len(receiver.requests) == 2
        assert check.path == "/1/users/validate.json"
        assert sent.path == "/1/messages.json"
        form = {k: v[0] for k, v in parse_qs(sent.body.decode()).items()}
        assert form["token"] == "app-token-1" and form["user"] == "user-key-1"
        assert form["title"] == "Missed call at ACME"
        assert form["message"] == "Missed call from +33142685300 for Giulia Rossi"
        assert await store.get_link("alerts", f"missed:{missed.call_id}") == "req-1"


async def test_example_plugin_pauses_when_the_quota_is_spent(types: dict[str, Any], store: Store):
    async with Receiver() as receiver, httpx.AsyncClient() as http:
        receiver.respond(429, headers={"X-Limit-App-Reset": str(int(time.time()) + 600)})
        conn = build(types, "alerts", base_url=receiver.url)
        missed = parse(fixture_bytes("call_completed_missed_inbound.json"))
        with pytest.raises(PauseConnector) as info:
            await conn.deliver(missed, delivery_ctx(store, http, "alerts", 1))
        assert 500 < info.value.until.timestamp() - time.time() <= 600
        assert await store.get_link("alerts", f"missed:{missed.call_id}") is None


async def test_the_minimal_connector_delivers_as_written(tmp_path: Path, db_url: str) -> None:
    (tmp_path / "ntfy.py").write_text(examples()["ntfy.py"], encoding="utf-8")
    async with Receiver() as receiver:
        settings = make_settings(
            db_url, {"feed": {"type": "ntfy", "url": receiver.url}}, plugin_dirs=[str(tmp_path)]
        )
        async with run_relay(settings) as relay:
            await relay.post(fixture_bytes("call_completed.json"))
            [delivery] = await relay.settled()
    assert delivery.state == "succeeded"
    assert [r.body for r in receiver.requests] == [
        "call:completed · call it_w204517_1764412210.77".encode()
    ]


def test_a_connector_whose_deliver_is_not_async_is_refused_at_load(tmp_path: Path) -> None:
    code = examples()["ntfy.py"].replace("async def deliver", "def deliver")
    code = code.replace("await ctx.http.post", "ctx.http.post")
    (tmp_path / "ntfy.py").write_text(code, encoding="utf-8")
    with pytest.raises(PluginError, match=r"relay_plugin_ntfy\.Ntfy\.deliver must be `async def"):
        connector_types([tmp_path])
