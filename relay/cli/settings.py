"""What every command shares: the settings it runs with (from ``--config``), and how it fails."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import click
from sqlalchemy.engine import make_url

from relay import logs
from relay.config import ConfigError, Settings, load_versioned
from relay.live_config import LiveConfig
from relay.registry import PluginError
from relay.secrets import Redactor


def fail(message: str) -> NoReturn:
    click.secho(message, fg="red", err=True)
    sys.exit(1)


def load_settings(ctx: click.Context) -> Settings:
    return load_live(ctx).current


def load_live(ctx: click.Context) -> LiveConfig:
    """The settings with their version, for a service process that may reload them."""
    path = Path(ctx.find_root().obj["config"])
    if not path.exists():
        fail(
            f"config error: no configuration file at {path.absolute()} ({_why(ctx)}); "
            "point to yours with `--config PATH` or the RELAY_CONFIG environment variable"
        )
    try:
        return LiveConfig(*load_versioned(path))
    except (ConfigError, PluginError) as exc:
        fail(f"config error: {exc}")


def _why(ctx: click.Context) -> str:
    root = ctx.find_root()
    source = root.get_parameter_source("config")
    if root.obj.get("config") != root.params.get("config"):
        return "given by --config after the command"
    if source is click.core.ParameterSource.ENVIRONMENT:
        return "given by RELAY_CONFIG"
    if source is click.core.ParameterSource.COMMANDLINE:
        return "given by --config"
    return "the default: config.yaml in the working directory"


def safe_url(url: str) -> str:
    """A database URL fit to print: the password hidden."""
    return make_url(url).render_as_string(hide_password=True)


def configure_logs(settings: Settings, redact: Redactor | None = None) -> None:
    """``redact``: the live config's redactor, which learns the secrets of reloaded configs."""
    cfg = settings.logging
    redact = redact or Redactor(settings.secret_values())
    logs.configure(cfg.level, cfg.format, show_numbers=cfg.show_numbers, redact=redact)
