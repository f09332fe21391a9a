"""The pluggy hook specifications: the whole surface a plugin implements."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from relay.connector import Connector

hookspec = pluggy.HookspecMarker("relay")
hookimpl = pluggy.HookimplMarker("relay")


@hookspec
def register_connectors(register: Callable[[type[Connector]], Any]) -> None:
    """Register connector classes: call ``register(ConnectorClass)`` once per class."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the ``relay`` CLI (a click group)."""
