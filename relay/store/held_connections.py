"""PostgreSQL connections kept checked out between batches of hot statements."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


class HeldConnections:
    """Pool checkouts kept across uses, for statements that run hundreds of times a second.

    On asyncpg every pool checkout pings the server first: three round trips, more than a
    batch's one statement. A connection comes back here after a use and returns to the pool once
    it has been unused for ``idle`` seconds; one that fails is discarded, never reused.
    """

    def __init__(self, engine: AsyncEngine, *, idle: float = 5.0) -> None:
        self.engine = engine
        self.idle = idle
        self._free: list[tuple[AsyncConnection, float]] = []
        self._sweep: asyncio.TimerHandle | None = None
        self._closing: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """The plain driver connection, in autocommit: one statement is one transaction."""
        conn = await self._take()
        try:
            raw = (await conn.get_raw_connection()).driver_connection
            yield raw  # type: ignore[misc]
        except BaseException:
            await conn.invalidate()
            await conn.close()
            raise
        loop = asyncio.get_running_loop()
        self._free.append((conn, loop.time()))
        if self._sweep is None:
            self._sweep = loop.call_later(self.idle, self._release_idle)

    async def _take(self) -> AsyncConnection:
        """A free held connection the server has not closed meanwhile, or a new checkout."""
        while self._free:
            conn = self._free.pop()[0]
            raw = (await conn.get_raw_connection()).driver_connection
            if not raw.is_closed():  # type: ignore[union-attr]
                return conn
            await conn.invalidate()
            await conn.close()
        return await self.engine.connect()

    def _release_idle(self) -> None:
        loop = asyncio.get_running_loop()
        self._sweep = None
        cutoff = loop.time() - self.idle
        stale = [conn for conn, since in self._free if since <= cutoff]
        self._free = [(conn, since) for conn, since in self._free if since > cutoff]
        for conn in stale:
            task = loop.create_task(conn.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        if self._free:
            self._sweep = loop.call_later(self.idle, self._release_idle)

    async def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        free, self._free = self._free, []
        for conn, _ in free:
            await conn.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
