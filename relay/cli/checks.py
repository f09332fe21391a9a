"""``relay check-config`` and ``relay plugins``: what this configuration and install amount to."""

from __future__ import annotations

import asyncio
import sys

import click
import msgspec

from relay.cli.settings import fail, load_settings, safe_url
from relay.config import Settings
from relay.registry import collect_connectors, describe, plugin_manager
from relay.runtime import running
from relay.secrets import Redactor, mask, mask_url
from relay.store import db


@click.command("check-config")
@click.option("--online", is_flag=True, help="Also ask every connector to verify its credentials.")
@click.pass_context
def check_config(ctx: click.Context, online: bool) -> None:
    """Validate the configuration and print it with secrets masked."""
    settings = load_settings(ctx)
    # Masking hides secret-named keys; the redactor also catches a secret under any other name.
    redact = Redactor(settings.secret_values())

    def echo(line: str) -> None:
        click.echo(redact(line))

    echo(f"{settings.source}: OK")
    echo(f"database: {safe_url(settings.database.url)}")
    echo(f"server: {settings.server.host}:{settings.server.port}")
    echo(f"admin api: {'on' if settings.admin.token else 'off'}")
    echo("connectors:")
    for name, inst in settings.connectors.items():
        options = mask(msgspec.to_builtins(inst.options, enc_hook=float))  # Duration → seconds
        echo(f"  {name} ({inst.type}) {msgspec.json.encode(options).decode()}")
        p = inst.policy
        echo(
            f"    delivery: max_attempts={p.max_attempts} timeout={p.timeout:g}s "
            f"concurrency={p.concurrency}"
        )
    echo("integrations:")
    for iid, integ in settings.integrations.items():
        secret = "secret set" if integ.secret or integ.sqs else "no secret"
        echo(f"  {iid} {integ.name or ''} [{integ.transport}, {secret}]".replace("  [", " ["))
        if integ.sqs:
            q = integ.sqs
            keys = "keys in config" if q.access_key_id else "AWS default chain"
            signer = "signing_secret" if q.signing_secret else "secret_access_key"
            echo(
                f"    queue: {mask_url(q.queue_url)} (credentials: {keys}; verified with {signer})"
            )
        for route in integ.routes:
            where = f" where {msgspec.json.encode(route.where).decode()}" if route.where else ""
            echo(f"    → {route.connector}: {', '.join(route.events)}{where}")
    if online:
        failures = asyncio.run(_online_checks(settings, redact))
        if failures:
            sys.exit(1)


async def _online_checks(settings: Settings, redact: Redactor) -> int:
    """Each connector's own ``check``, with the store and HTTP client a delivery would have."""
    failures = 0
    try:
        async with running(settings, role="cli", connectors=True) as rt:
            assert rt.connectors is not None
            for name, connector in rt.connectors.instances.items():
                try:
                    await connector.check(rt.connectors.context(name))
                    click.echo(f"  check {name}: ok")
                except Exception as exc:
                    failures += 1
                    click.secho(redact(f"  check {name}: FAILED {exc}"), fg="red")
    except db.SchemaOutOfDate as exc:
        fail(str(exc))
    return failures


@click.command("plugins")
@click.pass_context
def plugins_cmd(ctx: click.Context) -> None:
    """List loaded plugins, their hooks and the connector types they provide."""
    settings = load_settings(ctx)
    pm = plugin_manager(settings.plugins.dirs)
    for name, hooks in describe(pm):
        click.echo(f"{name}: {', '.join(hooks)}")
    click.echo("connector types:")
    for ctype, cls in sorted(collect_connectors(pm).items()):
        click.echo(f"  {ctype}: {cls.__module__}.{cls.__qualname__}")


def register(cli: click.Group) -> None:
    for command in (check_config, plugins_cmd):
        cli.add_command(command)
