"""Throttling of failed admin-token guesses: per client address and across all clients.

The admin token guards the dashboard and the API; without a limit anyone who can reach the port
can try it as fast as the server answers. Memory stays bounded whatever clients send: per-address
state lives in an LRU/TTL cache of fixed size, the overall limit in one fixed-length deque.
An address pushed out of the cache by a flood of others loses its count, which is why the
overall limit exists as well.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from cachetools import TTLCache
from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, TooManyRequestsException
from litestar.exceptions.responses import create_exception_response
from litestar.handlers import BaseRouteHandler

# Failures allowed in WINDOW seconds: per client address, and in total.
PER_CLIENT = 30
OVERALL = 100
WINDOW = 300.0
CLIENTS = 4096  # addresses remembered at once (each holds at most PER_CLIENT timestamps)


class FailureThrottle:
    """A sliding window of failed attempts: once ``limit`` failures fall within ``window``
    seconds, every attempt (right or wrong) is refused until the oldest of them ages out."""

    def __init__(
        self,
        *,
        per_client: int = PER_CLIENT,
        overall: int = OVERALL,
        window: float = WINDOW,
        clients: int = CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._per_client = per_client
        self._window = window
        self._clock = clock
        self._clients: TTLCache[str, deque[float]] = TTLCache(clients, window, timer=clock)
        self._overall: deque[float] = deque(maxlen=overall)

    def _wait(self, failures: deque[float] | None, now: float) -> float:
        if failures is None or len(failures) < (failures.maxlen or 0):
            return 0.0
        return max(0.0, failures[0] + self._window - now)

    def retry_after(self, client: str | None) -> int:
        """Whole seconds until ``client`` may try again; 0: it may try now."""
        now = self._clock()
        own = self._clients.get(client or "") if client is not None else None
        wait = max(self._wait(own, now), self._wait(self._overall, now))
        return math.ceil(wait)

    def failed(self, client: str | None) -> None:
        now = self._clock()
        self._overall.append(now)
        if client is None:
            return
        failures = self._clients.get(client)
        if failures is None:
            failures = deque(maxlen=self._per_client)
        failures.append(now)
        self._clients[client] = failures  # (re)set: the entry lives WINDOW past its last failure


def client_address(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The peer (or, behind ``server.trusted_proxies``, the forwarded client), bounded."""
    return connection.client.host[:64] if connection.client else None


def throttling(throttle: FailureThrottle) -> dict[str, Any]:
    """Router options putting its token-guarded routes behind ``throttle``: every request is
    refused (429, ``Retry-After``) while it says wait, and every 401 the routes answer counts
    as a failure."""

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        wait = throttle.retry_after(client_address(connection))
        if wait:
            raise TooManyRequestsException(
                "too many wrong admin tokens: try again later", headers={"Retry-After": str(wait)}
            )

    def refused(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        assert isinstance(exc, NotAuthorizedException)
        throttle.failed(client_address(request))
        return create_exception_response(request, exc)

    return {"guards": [guard], "exception_handlers": {NotAuthorizedException: refused}}
