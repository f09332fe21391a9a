"""The HTTP protocol ``relay serve`` runs: uvicorn's httptools protocol with the bounds it lacks.

relay faces the internet, and uvicorn times out only an idle keep-alive connection: a client that
sends its request line or headers a byte at a time, or never finishes its body, holds a socket
(a file descriptor) for as long as it likes, and enough of them leave none for real requests or
for the database. httptools has no bound on header bytes either. Here:

- a request's headers must arrive within ``server.header_timeout`` of the connection opening
  (or of the previous response), and are at most ``server.max_header_size`` bytes (431);
- its body must arrive within ``server.body_timeout`` of its headers;
- a client that misses a deadline gets a 408 and the connection is closed;
- at ``server.max_connections`` open connections a new one closes the connection that has waited
  longest for its request headers (a slow client or an idle keep-alive), never one whose request
  is under way; with none to close, uvicorn answers the new request 503.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("relay.http")

# descriptors the process needs besides client sockets: database files and connections,
# outbound connections to connectors, logs
FD_HEADROOM = 1024


@dataclass(frozen=True)
class Limits:
    header_timeout: float
    body_timeout: float
    max_header_size: int
    max_connections: int


@dataclass
class _Gate:
    """What the connections of one server share: who waits for headers, oldest first."""

    limits: Limits
    waiting: dict[Any, None] = field(default_factory=dict)  # insertion order: oldest first
    shedding: set[Any] = field(default_factory=set)  # closed by us, connection_lost not yet seen


def _refusal(status: HTTPStatus) -> bytes:
    body = status.phrase.encode()
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (status.value, body, len(body), body)
    )


_TIMEOUT = _refusal(HTTPStatus.REQUEST_TIMEOUT)
_TOO_LARGE = _refusal(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)


def limited_protocol(limits: Limits) -> type[asyncio.Protocol]:
    """A protocol class for ``uvicorn.run(http=...)``; one per server (the gate is shared)."""
    gate = _Gate(limits)

    class LimitedProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _header_bytes = 0
        _receiving_body = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) - len(gate.shedding) > limits.max_connections:
                self._shed_oldest_waiting()
            self._await_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            gate.waiting.pop(self, None)
            gate.shedding.discard(self)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self in gate.waiting and not self.transport.is_closing():
                # counted after parsing: bytes of a body that followed the headers never count
                self._header_bytes += len(data)
                if self._header_bytes > limits.max_header_size:
                    self._refuse(_TOO_LARGE, "request headers too large")

        def on_headers_complete(self) -> None:
            gate.waiting.pop(self, None)
            self._receiving_body = True
            self._arm(limits.body_timeout)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._receiving_body = False
            self._disarm()
            super().on_message_complete()
            if self.cycle.response_complete and not self.pipeline:
                self._await_headers()  # answered before its body ended: now idle

        def on_response_complete(self) -> None:
            pipelined = bool(self.pipeline)
            super().on_response_complete()
            if not (pipelined or self._receiving_body or self.transport.is_closing()):
                self._await_headers()

        # -- deadlines ------------------------------------------------------------------------

        def _await_headers(self) -> None:
            self._header_bytes = 0
            gate.waiting[self] = None
            self._arm(limits.header_timeout)

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            started = self.cycle is not None and self.cycle.response_started
            if self._receiving_body and started:
                self._close("request body too slow")  # the answer is out: nothing to add
            else:
                self._refuse(
                    _TIMEOUT,
                    "request body too slow" if self._receiving_body else "request headers too slow",
                )

        def _refuse(self, response: bytes, why: str) -> None:
            if not self.transport.is_closing():
                self.transport.write(response)
            self._close(why)

        def _close(self, why: str) -> None:
            log.debug("closing a connection: %s", why, extra={"client": self.client})
            gate.waiting.pop(self, None)
            gate.shedding.add(self)
            self._disarm()
            self.transport.close()

        def _shed_oldest_waiting(self) -> None:
            for oldest in gate.waiting:
                if oldest is not self:
                    oldest._close("connection limit reached; it waited longest for its headers")
                    return

    return LimitedProtocol


def raise_fd_limit(max_connections: int) -> None:
    """Lift the soft open-files limit towards the hard one (systemd: 1,024 soft, 524,288 hard)
    so that ``max_connections`` client sockets leave descriptors for everything else."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + FD_HEADROOM
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < wanted:
            log.warning(
                "open files limited to %d (hard limit): server.max_connections %d leaves few "
                "for the database and connectors; raise LimitNOFILE (docs/deployment.md)",
                target,
                max_connections,
            )
