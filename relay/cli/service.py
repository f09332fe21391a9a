"""``relay serve``, ``relay worker`` and ``relay migrate``: running the service, and its schema."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys

import click

from relay.cli.settings import configure_logs, fail, load_settings, safe_url
from relay.config import Settings
from relay.runtime import running
from relay.store import db


@click.command()
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
    from relay.cli.http_limits import Limits, limited_protocol, raise_fd_limit

    settings = load_settings(ctx)
    configure_logs(settings)
    if not db.is_sqlite(settings.database.url):
        asyncio.run(_require_schema(settings))
    app = create_app(settings, dispatch=not no_dispatch, sqs=sqs)
    tune_gc()
    server = settings.server
    raise_fd_limit(server.max_connections)
    limits = Limits(
        header_timeout=server.header_timeout,
        body_timeout=server.body_timeout,
        max_header_size=server.max_header_size,
        max_connections=server.max_connections,
    )
    config = uvicorn.Config(
        app,
        host=host or server.host,
        port=port or server.port,
        http=limited_protocol(limits),
        # uvicorn answers 503 once this many connections are open (counting the new one): beyond
        # max_connections, when no connection waiting for its headers could be closed instead
        limit_concurrency=server.max_connections + 1,
        timeout_keep_alive=server.keep_alive_timeout,  # type: ignore[arg-type]  # a float works
        log_config=None,
        access_log=False,
        proxy_headers=bool(server.trusted_proxies),
        forwarded_allow_ips=",".join(server.trusted_proxies) or None,
        timeout_graceful_shutdown=int(settings.dispatch.shutdown_grace) + 5,
    )
    sockets = [shared_socket(config.host, config.port)] if server.reuse_port else None
    runner = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):
        runner.run(sockets=sockets)
    if not runner.started:  # what uvicorn.run does: a failed start-up is exit status 3
        sys.exit(3)


def shared_socket(host: str, port: int) -> socket.socket:
    """A listening socket other `relay serve` processes can bind too (SO_REUSEPORT): the
    kernel spreads new connections across them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        fail(f"cannot listen on {host}:{port}: {exc.strerror}")
    sock.set_inheritable(True)
    return sock


async def _require_schema(settings: Settings) -> None:
    """Refuse to serve before uvicorn starts, with a message, rather than from its lifespan."""
    try:
        async with running(settings, role="cli", auto_migrate=False):
            pass
    except db.SchemaOutOfDate as exc:
        fail(str(exc))
    except Exception as exc:
        fail(f"cannot reach the database {safe_url(settings.database.url)}: {exc}")


@click.command()
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
    configure_logs(settings)
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr="127.0.0.1")
    asyncio.run(_worker(settings, sqs))


async def _worker(settings: Settings, sqs: bool | None = None) -> None:
    from relay.app import tune_gc

    try:
        async with running(settings, role="worker", sqs=sqs):
            tune_gc()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
    except db.SchemaOutOfDate as exc:
        fail(str(exc))


@click.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Bring the database schema to the version this code needs."""
    settings = load_settings(ctx)

    async def run() -> tuple[str | None, str | None]:
        engine = db.create_engine(settings.database.url, sqlite_sync=settings.database.sqlite_sync)
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


def register(cli: click.Group) -> None:
    for command in (serve, worker, migrate):
        cli.add_command(command)
