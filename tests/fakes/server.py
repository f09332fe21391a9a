"""Serve a fake vendor API on 127.0.0.1:<free port> in the current event loop, and the
bookkeeping every fake CRM shares: rolling rate-limit windows and a daily quota."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from tests.fakes import asgi


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """A fake vendor API on loopback; it has no lifespan and shuts down fast."""
    async with asgi.serve(app, lifespan="off", timeout_graceful_shutdown=1) as url:
        yield url


class Window:
    """At most ``limit`` accepted requests in any rolling ``interval`` seconds, as the CRM does."""

    def __init__(self, limit: int, interval: float) -> None:
        self.limit, self.interval = limit, interval
        self._recent: deque[float] = deque()
        self.accepted: list[float] = []  # every accepted request's time, for assertions
        self.rejected = 0
        self._skew = 0.0  # time the test let pass at once (elapse)
        # the wait a refusal names (Retry-After, reset headers); None: until the window frees. A
        # test that opens a long window itself (elapse) names a short one, or relay waits it out
        self.announce: float | None = None

    def _now(self) -> float:
        return time.monotonic() + self._skew

    def elapse(self) -> None:
        """Let one interval pass for this window at once: a test opens the window when it has
        seen a refusal, rather than betting that a busy machine keeps requests dense enough."""
        self._skew += self.interval

    def allow(self) -> bool:
        now = self._now()
        while self._recent and now - self._recent[0] >= self.interval:
            self._recent.popleft()
        if len(self._recent) >= self.limit:
            self.rejected += 1
            return False
        self._recent.append(now)
        self.accepted.append(now)
        return True

    @property
    def remaining(self) -> int:
        return max(self.limit - len(self._recent), 0)

    def reset_in(self) -> float:
        if self.announce is not None:
            return self.announce
        if not self._recent:
            return 0.0
        return max(self.interval - (self._now() - self._recent[0]), 0.0)

    def busiest(self) -> int:
        """The most requests this window ever accepted within one interval."""
        best, start = 0, 0
        for end, at in enumerate(self.accepted):
            while at - self.accepted[start] >= self.interval:
                start += 1
            best = max(best, end - start + 1)
        return best


class Daily:
    """A daily quota (requests or cost units) that resets at ``reset_at`` (epoch), then daily."""

    def __init__(self, limit: float | None = None, reset_at: float | None = None) -> None:
        self.limit = limit
        self.reset_at = reset_at or time.time() + 86400
        self.used = 0.0
        self.rejected = 0

    def spend(self, cost: float = 1) -> bool:
        now = time.time()
        while now >= self.reset_at:
            self.used, self.reset_at = 0.0, self.reset_at + 86400
        if self.limit is not None and self.used + cost > self.limit:
            self.rejected += 1
            return False
        self.used += cost
        return True

    @property
    def remaining(self) -> float | None:
        return None if self.limit is None else max(self.limit - self.used, 0)


class Faults:
    """Scripted misbehaviour after a record was persisted: ``hang`` or ``500``, ``times`` times."""

    def __init__(self) -> None:
        self.mode: str | None = None
        self.times = 0
        self.release = asyncio.Event()
        self.hit = asyncio.Event()

    def set(self, mode: str | None, times: int = 1) -> None:
        self.mode, self.times = mode, times

    async def after_persist(self) -> bool:
        """Run the fault, if one is due; True means: answer 500 instead of the real reply."""
        if not self.mode or self.times <= 0:
            return False
        self.times -= 1
        self.hit.set()
        if self.mode == "hang":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), 120)
            return True
        return self.mode == "500"
