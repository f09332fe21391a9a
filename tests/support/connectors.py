"""Helpers for tests of connectors: instances made exactly as the service makes them, from a
YAML block through the config loader, with every installed connector type available."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from relay.cli import main
from relay.config import ConfigError, parse_config
from relay.registry import connector_types

TYPES = connector_types()


def build(block: dict[str, Any], name: str = "out") -> Any:
    text = yaml.safe_dump({"connectors": {name: block}})
    inst = parse_config(text, connector_types=TYPES, env={}).connectors[name]
    return inst.cls(name, inst.options)


def config_error(block: dict[str, Any], name: str = "out") -> str:
    """The message `relay check-config` would print for this block."""
    with pytest.raises(ConfigError) as info:
        build(block, name)
    return str(info.value)


def check_config(tmp_path: Path, connectors: dict[str, Any]) -> Result:
    """`relay check-config` on a file with these connectors, each routed every event."""
    data = {
        "connectors": connectors,
        "integrations": {
            "q7m2xk": {"secret": "s", "routes": [{"connector": name} for name in connectors]}
        },
    }
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(data))
    return CliRunner().invoke(main, ["--config", str(cfg), "check-config"])
