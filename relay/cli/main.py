"""The ``relay`` command."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click
import httpx
import msgspec
from sqlalchemy.engine import make_url

from relay import logs
from relay.cli.operations import register as register_ops_commands
from relay.cli.settings import fail, load_settings
from relay.config import Settings, SqsConfig
from relay.registry import PluginError, collect_connectors, describe, plugin_manager
from relay.secrets import mask
from relay.store import db
from relay.wildix import samples
from relay.wildix.signature import HEADER, sign


def safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


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


register_ops_commands(main)  # events, deliveries, replay, erase, purge


@main.command()
@click.option("--host", help="Bind address (default: server.host).")
@click.option("--port", type=int, help="Port (default: server.port).")
@click.option("--no-dispatch", is_flag=True, help="Ingest only; run `relay worker` elsewhere.")
@click.option(
    "--sqs/--no-sqs",
    default=None,
    help="Consume the SQS integrations' queues here (default: yes, unless sqs.consume_in: worker).",
)
@click.pass_context
def serve(
    ctx: click.Context, host: str | None, port: int | None, no_dispatch: bool, sqs: bool | None
) -> None:
    """Run the HTTP ingest (and, by default, the dispatcher and SQS consumers) in this process."""
    import uvicorn

    from relay.app import create_app, tune_gc

    settings = load_settings(ctx)
    _logs(settings)
    if not db.is_sqlite(settings.database.url):
        asyncio.run(_require_schema(settings))
    app = create_app(settings, dispatch=not no_dispatch, sqs=sqs)
    tune_gc()
    uvicorn.run(
        app,
        host=host or settings.server.host,
        port=port or settings.server.port,
        log_config=None,
        access_log=False,
        proxy_headers=bool(settings.server.trusted_proxies),
        forwarded_allow_ips=",".join(settings.server.trusted_proxies) or None,
        timeout_graceful_shutdown=int(settings.dispatch.shutdown_grace) + 5,
    )


async def _require_schema(settings: Settings) -> None:
    engine = db.create_engine(settings.database.url)
    try:
        await db.ensure_schema(engine, auto_migrate=False)
    except db.SchemaOutOfDate as exc:
        fail(str(exc))
    except Exception as exc:
        fail(f"cannot reach the database {safe_url(settings.database.url)}: {exc}")
    finally:
        await engine.dispose()


def _logs(settings: Settings) -> None:
    cfg = settings.logging
    logs.configure(cfg.level, cfg.format, show_numbers=cfg.show_numbers)


@main.command()
@click.option(
    "--metrics-port",
    type=int,
    help="Serve this worker's own Prometheus counters on 127.0.0.1:PORT (/metrics).",
)
@click.option(
    "--sqs/--no-sqs",
    default=None,
    help="Also consume the SQS integrations' queues (default: no, unless sqs.consume_in says).",
)
@click.pass_context
def worker(ctx: click.Context, metrics_port: int | None, sqs: bool | None) -> None:
    """Run the dispatcher (scale-out: many workers on one PostgreSQL), optionally SQS consumers."""
    settings = load_settings(ctx)
    _logs(settings)
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr="127.0.0.1")
    asyncio.run(_worker(settings, sqs))


async def _worker(settings: Settings, sqs: bool | None = None) -> None:
    from relay.admin.retention import purge_forever
    from relay.app import http_client, tune_gc
    from relay.dispatch.connector_pool import Connectors
    from relay.dispatch.dispatcher import Dispatcher
    from relay.ingest.accept import Ingest
    from relay.ingest.sqs_consumer import SqsConsumers, consumes_here
    from relay.store.records import Store

    engine = db.create_engine(settings.database.url, pool_size=settings.database.pool_size)
    try:
        await db.ensure_schema(engine, auto_migrate=db.is_sqlite(settings.database.url))
    except db.SchemaOutOfDate as exc:
        fail(str(exc))
    store = Store(engine)
    async with http_client() as http:
        connectors = Connectors(settings, store, http)
        await connectors.start()
        dispatcher = Dispatcher(connectors)
        tune_gc()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.create_task(dispatcher.run())
        purger = asyncio.create_task(purge_forever(store, settings, stop))
        consumers = ingest = None
        if consumes_here(settings, "worker", sqs):
            ingest = Ingest(settings, store, dispatcher.wake)
            consumers = SqsConsumers(settings, ingest)
            consumers.start()
        await stop.wait()
        if consumers and ingest:
            await consumers.stop()
            await ingest.writer.close()
        await dispatcher.stop()
        await task
        await purger
        await connectors.close()
    await store.close()


@main.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Bring the database schema to the version this code needs."""
    settings = load_settings(ctx)

    async def run() -> tuple[str | None, str | None]:
        engine = db.create_engine(settings.database.url)
        try:
            before = await db.current_revision(engine)
            await db.migrate(engine)
            return before, await db.current_revision(engine)
        finally:
            await engine.dispose()

    before, after = asyncio.run(run())
    url = safe_url(settings.database.url)
    if before == after:
        click.echo(f"{url}: already at {after}")
    else:
        click.echo(f"{url}: migrated {before or 'empty'} → {after}")


@main.command("check-config")
@click.option("--online", is_flag=True, help="Also ask every connector to verify its credentials.")
@click.pass_context
def check_config(ctx: click.Context, online: bool) -> None:
    """Validate the configuration and print it with secrets masked."""
    settings = load_settings(ctx)
    click.echo(f"{settings.source}: OK")
    click.echo(f"database: {safe_url(settings.database.url)}")
    click.echo(f"server: {settings.server.host}:{settings.server.port}")
    click.echo(f"admin api: {'on' if settings.admin.token else 'off'}")
    click.echo("connectors:")
    for name, inst in settings.connectors.items():
        options = mask(msgspec.to_builtins(inst.options, enc_hook=float))  # Duration → seconds
        click.echo(f"  {name} ({inst.type}) {msgspec.json.encode(options).decode()}")
        p = inst.policy
        click.echo(
            f"    delivery: max_attempts={p.max_attempts} timeout={p.timeout:g}s "
            f"concurrency={p.concurrency}"
        )
    click.echo("integrations:")
    for iid, integ in settings.integrations.items():
        secret = "secret set" if integ.secret or integ.sqs else "no secret"
        click.echo(f"  {iid} {integ.name or ''} [{integ.transport}, {secret}]".replace("  [", " ["))
        if integ.sqs:
            q = integ.sqs
            keys = "keys in config" if q.access_key_id else "AWS default chain"
            signer = "signing_secret" if q.signing_secret else "secret_access_key"
            click.echo(f"    queue: {q.queue_url} (credentials: {keys}; verified with {signer})")
        for route in integ.routes:
            where = f" where {msgspec.json.encode(route.where).decode()}" if route.where else ""
            click.echo(f"    → {route.connector}: {', '.join(route.events)}{where}")
    if online:
        failures = asyncio.run(_online_checks(settings))
        if failures:
            sys.exit(1)


async def _online_checks(settings: Settings) -> int:
    from relay.app import http_client
    from relay.dispatch.connector_pool import Connectors
    from relay.store.records import Store

    engine = db.create_engine(settings.database.url)
    failures = 0
    async with http_client() as http:
        store = Store(engine)
        connectors = Connectors(settings, store, http)
        for name, connector in connectors.instances.items():
            try:
                await connector.check(connectors.context(name))
                click.echo(f"  check {name}: ok")
            except Exception as exc:
                failures += 1
                click.secho(f"  check {name}: FAILED {exc}", fg="red")
    await store.close()
    return failures


@main.command("plugins")
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


def fixture_names() -> list[str]:
    return sorted(
        p.name.removesuffix(".json") for p in _fixtures().iterdir() if p.name.endswith(".json")
    )


def _fixtures() -> Any:
    return samples()


def sample_body(integration_id: str, *, fixture: str, file: str | None, exact: bool) -> bytes:
    """A fixture (or file) addressed to this integration; re-stamped so it is a new event."""
    raw = Path(file).read_bytes() if file else (_fixtures() / f"{fixture}.json").read_bytes()
    if exact:
        return raw
    body = msgspec.json.decode(raw)
    body["integrationId"] = integration_id
    body["time"] = int(time.time() * 1000)
    return msgspec.json.encode(body)


@main.command("send-test")
@click.argument("integration_id")
@click.option(
    "--fixture", default="call_completed", show_default=True, help="Built-in sample event."
)
@click.option(
    "--file", type=click.Path(exists=True, dir_okay=False), help="Send this body instead."
)
@click.option("--url", help="Webhook URL (default: this config's server).")
@click.option("--exact", is_flag=True, help="Send the bytes unchanged (no re-stamping).")
@click.option("--list", "list_", is_flag=True, help="List the built-in fixtures.")
@click.option("--sqs", is_flag=True, help="Send it to the integration's SQS queue instead.")
@click.pass_context
def send_test(
    ctx: click.Context,
    integration_id: str,
    fixture: str,
    file: str | None,
    url: str | None,
    exact: bool,
    list_: bool,
    sqs: bool,
) -> None:
    """Sign a sample event like Wildix does and POST it to a running relay (or queue it)."""
    if list_:
        click.echo("\n".join(fixture_names()))
        return
    settings = load_settings(ctx)
    integ = settings.integrations.get(integration_id)
    if integ is None:
        fail(f"no integration {integration_id!r} in {settings.source}")
        return
    if not file and fixture not in fixture_names():
        fail(f"unknown fixture {fixture!r}; try --list")
    body = sample_body(integration_id, fixture=fixture, file=file, exact=exact)
    if sqs:
        _send_sqs(integration_id, integ.sqs, body)
        return
    if integ.transport == "sqs":
        fail(f"integration {integration_id} uses SQS: add --sqs")
    if not integ.secret:
        fail(f"integration {integration_id} has no webhook secret")
        return
    if url is None:
        host = (
            settings.server.host if settings.server.host not in ("0.0.0.0", "::") else "127.0.0.1"
        )
        url = f"http://{host}:{settings.server.port}/webhooks/{integration_id}"
    headers = {HEADER: sign(body, integ.secret), "content-type": "application/json"}
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        fail(f"could not reach {url}: {exc}")
        return
    click.echo(f"POST {url} → {response.status_code} {response.text}")
    if response.status_code != 200:
        sys.exit(1)


def _send_sqs(integration_id: str, cfg: SqsConfig | None, body: bytes) -> None:
    from relay.ingest.sqs_consumer import describe, send

    if cfg is None:
        fail(f"integration {integration_id} has no sqs block")
        return
    try:
        message_id = asyncio.run(send(cfg, body))
    except UnicodeDecodeError:
        fail("an SQS message body must be UTF-8 text")
        return
    except Exception as exc:
        fail(f"could not send to {cfg.queue_url}: {describe(exc)}")
        return
    click.echo(f"SQS {cfg.queue_url} → MessageId {message_id}")
