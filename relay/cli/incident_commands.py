"""``relay incidents``: relay's own incidents (relay.admin.watcher), read from the database."""

from __future__ import annotations

import click

from relay.admin.watcher import incident_out
from relay.cli.operations import _json, _run, _when, as_json


@click.command("incidents")
@click.option("--all", "show_all", is_flag=True, help="Also list resolved incidents.")
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=100,
    show_default=True,
    help="At most this many, newest first.",
)
@as_json
@click.pass_context
def incidents(ctx: click.Context, show_all: bool, limit: int, as_json: bool) -> None:
    """relay's own incidents: open circuits, quota pauses, refused credentials, dead letters."""
    found = _run(ctx, lambda _st, store: store.incidents(open_only=not show_all, limit=limit))
    rows = [incident_out(i) for i in found]
    if as_json:
        return _json(rows)
    line = "{:>6}  {:<9} {:<14} {:<24} {:<19}  {}"
    click.echo(line.format("ID", "STATE", "KIND", "SUBJECT", "OPENED (UTC)", "SUMMARY"))
    for i in rows:
        click.echo(line.format(i.id, i.state, i.kind, i.subject, _when(i.opened_at), i.summary))
    if not rows:
        click.echo("no open incidents" if not show_all else "no incidents", err=True)


def register(cli: click.Group) -> None:
    cli.add_command(incidents)
