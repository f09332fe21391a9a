"""``relay circuits`` and ``relay circuit open|close NAME``: the connectors' circuit breakers, on
the database directly (a running cluster follows a change within one poll interval)."""

from __future__ import annotations

import click

from relay.admin.breakers import CircuitStatus, close_circuit, open_circuit, statuses
from relay.cli.operations import _json, _run, _when, as_json


def _show(rows: list[CircuitStatus]) -> None:
    line = "{:<24} {:<10} {:>8}  {:<19}  {:<19}  {}"
    click.echo(line.format("CONNECTOR", "STATE", "FAILURES", "OPENED (UTC)", "NEXT PROBE", "WHY"))
    for c in rows:
        state = f"{c.state}*" if c.manual else c.state
        failures = f"{c.failures}/{c.threshold}" if c.threshold else f"{c.failures}/off"
        click.echo(
            line.format(
                c.connector,
                state,
                failures,
                _when(c.opened_at),
                _when(c.next_probe_at),
                c.reason or "",
            )
        )
    if any(c.manual for c in rows):
        click.echo("* opened by hand: no probes until `relay circuit close`", err=True)


@click.command("circuits")
@click.option("--history", is_flag=True, help="Also list each circuit's latest transitions.")
@as_json
@click.pass_context
def circuits(ctx: click.Context, history: bool, as_json: bool) -> None:
    """Each connector's circuit breaker: closed, open or half_open."""
    rows = _run(ctx, lambda st, store: statuses(store, st))
    if as_json:
        return _json(rows)
    _show(rows)
    if history:
        for c in rows:
            for t in c.history:
                click.echo(
                    f"{c.connector}  {_when(t.at)}  {t.from_state} → {t.to_state}  "
                    f"{t.reason or ''}  ({t.worker or '-'})"
                )


@click.group("circuit")
def circuit() -> None:
    """Open or close a connector's circuit breaker by hand."""


reason_option = click.option("--reason", help="Why, kept in the circuit's history.")


@circuit.command("open")
@click.argument("name")
@reason_option
@as_json
@click.pass_context
def open_(ctx: click.Context, name: str, reason: str | None, as_json: bool) -> None:
    """Hold connector NAME's deliveries (e.g. a maintenance window) until closed by hand."""
    status = _run(ctx, lambda st, store: open_circuit(store, st, name, reason))
    if as_json:
        return _json(status)
    click.echo(f"circuit {name}: {status.state} (by hand; no probes until closed)")


@circuit.command("close")
@click.argument("name")
@reason_option
@as_json
@click.pass_context
def close(ctx: click.Context, name: str, reason: str | None, as_json: bool) -> None:
    """Let connector NAME's deliveries go again now."""
    status = _run(ctx, lambda st, store: close_circuit(store, st, name, reason))
    if as_json:
        return _json(status)
    click.echo(f"circuit {name}: {status.state}")


def register(cli: click.Group) -> None:
    for command in (circuits, circuit):
        cli.add_command(command)
