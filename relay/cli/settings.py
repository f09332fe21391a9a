"""What every command shares: the settings it runs with (from ``--config``), and how it fails."""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from relay.config import ConfigError, Settings, load_config
from relay.registry import PluginError


def fail(message: str) -> NoReturn:
    click.secho(message, fg="red", err=True)
    sys.exit(1)


def load_settings(ctx: click.Context) -> Settings:
    try:
        return load_config(ctx.obj["config"])
    except (ConfigError, PluginError) as exc:
        fail(f"config error: {exc}")
