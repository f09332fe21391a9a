"""Time limits for many short attempts, without a timer on the event loop for each one.

A timer per attempt is a push onto the event loop's timer heap, and attempts that finish in
milliseconds leave their cancelled timers there by the thousand (bench/README.md has the cost).
Here a limit starts unarmed, and a watchdog ticking once a ``tick`` arms the few still
running close to their deadline, so each fires exactly when ``asyncio.timeout`` would.
"""

from __future__ import annotations

import asyncio


class Deadlines:
    def __init__(self, tick: float = 1.0) -> None:
        self.tick = tick
        self._limits: dict[asyncio.Timeout, float] = {}  # running limits → deadline (loop time)
        self._watchdog: asyncio.Task[None] | None = None

    def timeout(self, seconds: float) -> asyncio.Timeout:
        """``asyncio.timeout(seconds)``; pass it to ``forget`` when its block ends."""
        if seconds <= 2 * self.tick:
            return asyncio.timeout(seconds)
        limit = asyncio.timeout(None)
        self._limits[limit] = asyncio.get_running_loop().time() + seconds
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch(), name="relay-dispatch-timeouts")
        return limit

    def forget(self, limit: asyncio.Timeout) -> None:
        self._limits.pop(limit, None)

    async def _watch(self) -> None:
        """Arm the limits falling due within the next two ticks, while any are running."""
        loop = asyncio.get_running_loop()
        try:
            while self._limits:
                await asyncio.sleep(self.tick)
                soon = loop.time() + 2 * self.tick
                for limit, deadline in self._limits.items():
                    if deadline < soon and limit.when() is None:
                        limit.reschedule(deadline)
        finally:
            self._watchdog = None

    def close(self) -> None:
        """Nothing left to watch: do not wait out the watchdog's tick."""
        if self._watchdog is not None:
            self._watchdog.cancel()
