"""What every command shares: the settings it runs with (from ``--config``), and how it fails."""

from __future__ import annotations

import sys
from typing import NoReturn

import click
from sqlalchemy.engine import make_url

from relay import logs
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


def safe_url(url: str) -> str:
    """A database URL fit to print: the password hidden."""
    return make_url(url).render_as_string(hide_password=True)


def configure_logs(settings: Settings) -> None:
    cfg = settings.logging
    logs.configure(cfg.level, cfg.format, show_numbers=cfg.show_numbers)
