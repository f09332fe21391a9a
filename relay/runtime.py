"""One process's parts, built and torn down in one place: ``relay serve`` (the app's lifespan),
``relay worker``, ``check-config --online`` and the admin commands all enter :func:`running`.

Which parts a process gets depends on its role; the order they stop in never does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

import httpx
from httpx_aiohttp import AiohttpTransport

from relay import metrics
from relay.admin.queries import Queries
from relay.admin.retention import purge_forever
from relay.admin.watcher import watch_forever
from relay.config import ConfigError, Settings, load_versioned
from relay.dispatch.connector_pool import Connectors, close_all
from relay.dispatch.dispatcher import Dispatcher
from relay.ingest.accept import Ingest
from relay.ingest.sqs_consumer import SqsConsumers, consumes_here
from relay.live_config import LiveConfig, ReloadResult, needs_restart
from relay.registry import PluginError
from relay.store import db
from relay.store.records import Store

log = logging.getLogger("relay.runtime")

Role = Literal["serve", "worker", "cli"]


@dataclass
class Runtime:
    """What :func:`running` built; a part this process does not run is None."""

    settings: Settings  # as it was at start-up; ``live.current`` is the config in force
    role: Role
    store: Store
    queries: Queries
    live: LiveConfig
    reloader: Reloader
    http: httpx.AsyncClient | None = None
    connectors: Connectors | None = None
    dispatcher: Dispatcher | None = None
    ingest: Ingest | None = None
    sqs: SqsConsumers | None = None


def http_client() -> httpx.AsyncClient:
    """One pooled client per process, shared by every connector (keep-alive matters).

    Connectors see the httpx API; underneath, aiohttp's connection pool does the I/O, because
    httpcore's pool costs several times more CPU per request under concurrency (bench/dispatch).
    """
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    return httpx.AsyncClient(
        transport=AiohttpTransport(limits=limits),
        timeout=httpx.Timeout(15.0, connect=5.0),
        headers={"user-agent": "relay/0.1 (+wildix events)"},
    )


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
    *,
    role: Role,
    dispatch: bool = True,
    sqs: bool | None = None,
    auto_migrate: bool | None = None,
    connectors: bool = False,
    live: LiveConfig | None = None,
) -> AsyncIterator[Runtime]:
    """Build this process's parts, yield them, then stop them in one order.

    Parts per role:

    - ``serve``: store, HTTP client, connectors, ingest, the dispatcher (unless ``dispatch`` is
      false), SQS consumers (``sqs``, else ``sqs.consume_in``), the retention purger, the
      incident watcher (relay.admin.watcher).
    - ``worker``: store, HTTP client, connectors, the dispatcher, the purger, the incident
      watcher, and SQS consumers
      with their ingest only when ``sqs`` (else ``sqs.consume_in``) says so.
    - ``cli``: the store and its queries alone (the admin commands); ``connectors=True`` adds
      the HTTP client and the connector instances, not started (``check-config --online``).

    ``live``: the config holder a reload swaps (one is made over ``settings`` if not given);
    ``rt.reloader`` applies a reload to every part.

    The schema is checked on entry: migrated to head when ``auto_migrate`` (default: on SQLite),
    else :class:`relay.store.db.SchemaOutOfDate` is raised.

    Shutdown order, whatever the role and even when start-up failed halfway:

    1. SQS consumers stop taking messages; their in-flight batches commit and are deleted;
    2. the ingest writer flushes what was accepted;
    3. the retention purger and the incident watcher stop;
    4. the dispatcher stops claiming and drains (in-flight deliveries get the grace period,
       unfinished ones are released back to pending);
    5. connectors close;
    6. the HTTP client closes;
    7. the store closes, last, since every part above may still write to it.
    """
    service = role != "cli"
    live = live or LiveConfig(settings)
    if auto_migrate is None:
        auto_migrate = db.is_sqlite(settings.database.url)
    consume = service and consumes_here(settings, role, sqs)
    run_dispatcher = role == "worker" or (role == "serve" and dispatch)
    connectors = connectors or service  # every service process starts them, --no-dispatch too

    async with contextlib.AsyncExitStack() as stack:
        # Entered in the reverse of the shutdown order: the exit stack unwinds last-in first-out.
        engine = db.create_engine(
            settings.database.url,
            pool_size=settings.database.pool_size,
            echo=settings.database.echo,
            sqlite_sync=settings.database.sqlite_sync,
        )
        stack.push_async_callback(engine.dispose)  # a Store that was never built owns nothing
        await db.ensure_schema(engine, auto_migrate=auto_migrate)
        store = Store(engine)
        stack.push_async_callback(store.close)  # 7
        rt = Runtime(settings, role, store, Queries(store, live), live, Reloader(live))
        if connectors:
            rt.http = http_client()
            stack.push_async_callback(rt.http.aclose)  # 6
            rt.connectors = Connectors(settings, store, rt.http)
            if service:
                await rt.connectors.start()
                stack.push_async_callback(rt.connectors.close)  # 5
        if run_dispatcher and rt.connectors is not None:
            rt.dispatcher = Dispatcher(rt.connectors, redact=live.redactor)
            task = asyncio.create_task(rt.dispatcher.run())
            stack.push_async_callback(_stop_dispatcher, rt.dispatcher, task)  # 4
        if service:  # the retention purger
            stop_purge = asyncio.Event()
            purger = asyncio.create_task(purge_forever(store, live, stop_purge))
            stack.push_async_callback(_stop_purger, stop_purge, purger)  # 3
            watcher = asyncio.create_task(watch_forever(store, live, stop_purge))  # incidents
            stack.push_async_callback(_stop_purger, stop_purge, watcher)
        if role == "serve" or consume:
            wake = rt.dispatcher.wake if rt.dispatcher else None
            rt.ingest = Ingest(live, store, wake)
            stack.push_async_callback(rt.ingest.writer.close)  # 2
        if consume:
            assert rt.ingest is not None
            rt.sqs = SqsConsumers(settings, rt.ingest)
            rt.sqs.start()
            stack.push_async_callback(rt.sqs.stop)  # 1
        rt.reloader.connectors, rt.reloader.dispatcher = rt.connectors, rt.dispatcher
        # a reload under way (its drain included) ends before the parts it changes stop
        stack.push_async_callback(rt.reloader.wait)
        metrics.config_loaded(live.version, live.loaded_at)
        yield rt
        log.debug("%s runtime stopping", role)


@contextlib.asynccontextmanager
async def on_sighup(reloader: Reloader) -> AsyncIterator[None]:
    """SIGHUP reloads the config file while this is entered (``relay serve``, ``relay worker``)."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[ReloadResult]] = set()

    def hup() -> None:
        task = loop.create_task(reloader.reload())
        tasks.add(task)  # a task nobody holds can be collected mid-run
        task.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGHUP, hup)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # not killed by one while stopping
        await asyncio.gather(*tasks, return_exceptions=True)


async def _stop_dispatcher(dispatcher: Dispatcher, task: asyncio.Task[None]) -> None:
    await dispatcher.stop()
    await task


async def _stop_purger(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    await task


class Reloader:
    """Re-reads ``config.yaml`` and applies it to a running process (SIGHUP, ``relay reload``,
    ``POST /api/v1/config/reload``), one reload at a time.

    The new file is validated whole first; a bad file, or a change only a restart can apply,
    is refused with its key path and the old config stays in force. Otherwise: connectors it
    adds (or changes) are started, the config is swapped (each request and claim from then on
    reads the new one), and connectors it removes (or replaces) stop claiming and are closed
    once their attempts in flight have finished. Their pending deliveries stay pending.
    """

    def __init__(self, live: LiveConfig) -> None:
        self.live = live
        self.connectors: Connectors | None = None
        self.dispatcher: Dispatcher | None = None
        self._lock = asyncio.Lock()

    async def reload(self) -> ReloadResult:
        async with self._lock:
            result = await self._reload()
        metrics.CONFIG_RELOADS.labels(result.result).inc()
        if result.result == "refused":
            log.error("config reload refused: %s", result.error, extra={"key": result.key})
        else:
            log.info(
                "config %s",
                result.result,
                extra={
                    "version": result.version,
                    "added": result.added,
                    "removed": result.removed,
                    "changed": result.changed,
                },
            )
        return result

    async def wait(self) -> None:
        """Until a reload under way has finished (its drains included)."""
        async with self._lock:
            pass

    async def _reload(self) -> ReloadResult:
        live = self.live
        try:
            # in a thread: plugin files in plugins.dirs are imported again, as a restart would
            settings, version = await asyncio.to_thread(load_versioned, live.path)
            if version == live.version:
                return live.result("unchanged")
            if error := needs_restart(live.current, settings):
                raise error
        except ConfigError as exc:
            return live.result("refused", error=str(exc), key=exc.path)
        except PluginError as exc:  # a plugin file that fails to import
            return live.result("refused", error=str(exc), key="$.plugins.dirs")
        if self.connectors is None:  # the CLI role runs no connectors
            live.swap(settings, version)
            return live.result("loaded")
        try:
            changes = await self.connectors.apply(settings)
        except ConfigError as exc:
            return live.result("refused", error=str(exc), key=exc.path)
        live.swap(settings, version)
        metrics.config_loaded(version, live.loaded_at)
        result = live.result(
            "loaded", added=changes.added, removed=changes.removed, changed=changes.changed
        )
        if self.dispatcher is not None:
            self.dispatcher.adopt(changes)
            await self.dispatcher.retire(list(changes.retired))
        await close_all(changes.retired)
        return result
