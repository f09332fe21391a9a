"""The ``relay`` command group: its ``--config`` option, and where every command is registered.

The commands live in modules named for what they do; none of them imports this one.
"""

from __future__ import annotations

from typing import Any

import click

from relay.cli import checks, circuit_commands, incident_commands, operations, send_test, service
from relay.registry import PluginError, plugin_manager


def _config_after(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.find_root().ensure_object(dict)["config"] = value


def _take_config(command: click.Command) -> None:
    """``relay serve --config x.yaml`` works like ``relay --config x.yaml serve``: users type it
    after the command, so every command (a plugin's too) accepts it there."""
    if not any(p.name == "config_after" for p in command.params):
        command.params.append(
            click.Option(
                ["--config", "config_after"],
                type=click.Path(dir_okay=False),
                expose_value=False,
                callback=_config_after,
                help="Configuration file (same as `relay --config`).",
            )
        )
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _take_config(sub)


class _Group(click.Group):
    """Lets plugins add commands through the ``register_commands`` hook."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        try:
            plugin_manager().hook.register_commands(cli=self)
        except PluginError as exc:
            click.secho(f"warning: {exc}", fg="yellow", err=True)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        _take_config(cmd)
        super().add_command(cmd, name)


@click.group(cls=_Group)
@click.option(
    "--config",
    "config",
    envvar="RELAY_CONFIG",
    default="config.yaml",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Configuration file (or RELAY_CONFIG).",
)
@click.pass_context
def main(ctx: click.Context, config: str) -> None:
    """Wildix events in — verified, stored, delivered to CRMs, Slack, email and HTTP."""
    ctx.ensure_object(dict)["config"] = config


for _module in (service, checks, send_test, operations, circuit_commands, incident_commands):
    _module.register(main)
