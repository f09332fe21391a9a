"""``relay serve``, ``relay worker`` and ``relay migrate``: running the service, and its schema."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path

import click
import httpx
import yaml

from relay.cli.settings import configure_logs, fail, load_live, load_settings, safe_url
from relay.config import ConfigError, ServerConfig, Settings, interpolate
from relay.live_config import LiveConfig
from relay.runtime import on_sighup, running
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

    live = load_live(ctx)
    settings = live.current
    configure_logs(settings, live.redactor)
    if not db.is_sqlite(settings.database.url):
        asyncio.run(_require_schema(settings))
    app = create_app(settings, dispatch=not no_dispatch, sqs=sqs, live=live, reload_on_sighup=True)
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
    live = load_live(ctx)
    configure_logs(live.current, live.redactor)
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr="127.0.0.1")
    asyncio.run(_worker(live, sqs))


async def _worker(live: LiveConfig, sqs: bool | None = None) -> None:
    from relay.app import tune_gc

    try:
        async with (
            running(live.current, role="worker", sqs=sqs, live=live) as rt,
            on_sighup(rt.reloader),
        ):
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


@click.command()
@click.option(
    "--url",
    help="The running `relay serve` to ask (default: http://server.host:server.port).",
)
@click.option(
    "--pid",
    type=int,
    help="Send SIGHUP to this process instead (`relay worker`, or serve without admin.token).",
)
@click.pass_context
def reload(ctx: click.Context, url: str | None, pid: int | None) -> None:
    """Tell a running relay to re-read its config file; exits 1 if the file was refused."""
    if pid is not None:
        try:
            os.kill(pid, signal.SIGHUP)
        except OSError as exc:
            fail(f"cannot signal process {pid}: {exc.strerror}")
        click.echo(f"sent SIGHUP to {pid}: its log says whether the config was loaded")
        return
    where, token = _admin_address(ctx)
    url = url or where
    if not token:
        fail("the admin API is off (admin.token is not set): use --pid PID to send SIGHUP")
    try:
        answer = httpx.post(
            f"{url.rstrip('/')}/api/v1/config/reload",
            headers={"authorization": f"Bearer {token}"},
            timeout=120,  # a reload waits for removed connectors' attempts in flight
        )
    except httpx.HTTPError as exc:
        fail(f"cannot reach relay at {url}: {exc}")
    if answer.status_code not in (200, 422):
        fail(f"relay at {url} answered {answer.status_code}: {answer.text[:200]}")
    result = answer.json()
    if result["result"] == "refused":
        fail(f"refused: {result['error']} (config {result['version']} stays in force)")
    click.echo(f"{result['result']}: config {result['version']} (loaded {result['loaded_at']})")
    for change in ("added", "removed", "changed"):
        if result[change]:
            click.echo(f"  connectors {change}: {', '.join(result[change])}")


def _admin_address(ctx: click.Context) -> tuple[str, str]:
    """The running serve's URL and admin token, read from the file's `server` and `admin`
    alone: a file the service will refuse must still reach it, to be refused with its key."""
    path = Path(ctx.find_root().obj["config"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        sections = interpolate({k: data.get(k) or {} for k in ("server", "admin")}, os.environ)
        server, admin = sections["server"], sections["admin"]
        host = str(server.get("host", ServerConfig().host))
        port = int(server.get("port", ServerConfig().port))
        token = str(admin.get("token") or "")
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError, ConfigError) as exc:
        fail(f"config error: cannot read server and admin from {path}: {exc}")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}", token


def register(cli: click.Group) -> None:
    for command in (serve, worker, migrate, reload):
        cli.add_command(command)
