"""One relay for many synchronous examples: the real app (tests.support.relay.run_relay) in a
thread with its own event loop, so a hypothesis test drives it over sockets, one example after
another, without starting a relay per example."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from relay.config import Settings
from tests.support.databases import postgres_database
from tests.support.relay import RunningRelay, run_relay

T = TypeVar("T")


class ThreadedRelay:
    """The running relay and the loop it lives in; ``call`` runs a coroutine there."""

    def __init__(self, relay: RunningRelay, loop: asyncio.AbstractEventLoop) -> None:
        self.relay = relay
        self.loop = loop

    @property
    def url(self) -> str:
        return self.relay.url

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run ``coro`` on the relay's loop (its store and client live there); its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


@contextlib.asynccontextmanager
async def _database(database: str, tmp_path: Path) -> AsyncIterator[str]:
    if database == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/relay.db"
        return
    async with postgres_database() as url:
        yield url


@contextlib.contextmanager
def relay_in_thread(
    settings_for: Callable[[str], Settings], database: str, tmp_path: Path
) -> Iterator[ThreadedRelay]:
    """A fresh ``database`` ("sqlite" or "postgres") and the relay on it (no dispatcher)."""
    started: Future[ThreadedRelay] = Future()
    stop: list[asyncio.Event] = []

    async def main() -> None:
        try:
            async with (
                _database(database, tmp_path) as url,
                run_relay(settings_for(url), dispatch=False) as relay,
            ):
                stop.append(asyncio.Event())
                started.set_result(ThreadedRelay(relay, asyncio.get_running_loop()))
                await stop[0].wait()
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise

    errors: list[BaseException] = []

    def thread_main() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=thread_main, name="relay", daemon=True)
    thread.start()
    threaded = started.result(timeout=60)
    try:
        yield threaded
    finally:
        threaded.loop.call_soon_threadsafe(stop[0].set)
        thread.join(timeout=60)
    assert not thread.is_alive(), "the relay did not stop"
    if errors:
        raise errors[0]


def until(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll a plain ``check`` from the test's own thread until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last value {value!r}")
        time.sleep(0.05)
