"""The ``relay`` command group: its ``--config`` option, and where every command is registered.

The commands live in modules named for what they do; none of them imports this one.
"""

from __future__ import annotations

from typing import Any

import click

from relay.cli import checks, operations, send_test, service
from relay.registry import PluginError, plugin_manager


class _Group(click.Group):
    """Lets plugins add commands through the ``register_commands`` hook."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        try:
            plugin_manager().hook.register_commands(cli=self)
        except PluginError as exc:
            click.secho(f"warning: {exc}", fg="yellow", err=True)


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
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


for _module in (service, checks, send_test, operations):
    _module.register(main)
