"""A real loopback HTTP server that records what it receives and answers as scripted.

Tests of anything that makes HTTP requests point it here instead of mocking the client, so the
bytes on the wire, the headers and the timing are the real ones. It speaks HTTP/1.1 through h11
on ``asyncio.start_server``: no framework, full control over shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import h11

__all__ = ["Received", "Receiver"]


@dataclass
class Received:
    """One request as it arrived; ``path`` excludes the query string, kept in ``query``."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    at: float  # time.time() when the body had fully arrived
    query: str = ""

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes
    headers: dict[str, str]
    echo: bool = False  # the request's headers follow the body, as careless targets send them


_DEFAULT = _Reply(200, b"ok", {"content-type": "text/plain"})


class Receiver:
    """Loopback HTTP server: accepts any method and path, records, replies from a script.

    ``async with Receiver() as r`` runs it in the current event loop; ``start_in_thread()``
    runs it in its own thread and loop for synchronous or subprocess tests.
    """

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[Received] = []
        self._replies: deque[_Reply] = deque()
        self._delay = 0.0
        self._lock = threading.Lock()  # respond()/delay() may come from another thread
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._thread_stop: asyncio.Event | None = None

    # -- scripting ------------------------------------------------------------------------------

    def respond(
        self,
        status: int,
        *,
        body: bytes | str = b"",
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Queue ``times`` identical replies; once the queue is empty every reply is 200 "ok"."""
        data = body.encode() if isinstance(body, str) else bytes(body)
        hdrs = {k.lower(): v for k, v in (headers or {}).items()}
        if data and "content-type" not in hdrs:
            hdrs["content-type"] = "text/plain"
        with self._lock:
            self._replies.extend(_Reply(status, data, hdrs) for _ in range(times))

    def echo(self, status: int, *, text: str = "", times: int = 1) -> None:
        """Queue ``times`` replies whose body is ``text`` (a line), then the request's headers
        (``name: value`` lines): a target that echoes what it got, credentials included, in an
        error body."""
        body = f"{text}\n".encode() if text else b""
        hdrs = {"content-type": "text/plain"}
        with self._lock:
            self._replies.extend(_Reply(status, body, hdrs, echo=True) for _ in range(times))

    def clear(self) -> None:
        """Drop the queued replies: a target that was down answers 200 "ok" again."""
        with self._lock:
            self._replies.clear()

    def delay(self, seconds: float) -> None:
        """Hold every later reply for ``seconds`` (after recording the request): for timeouts."""
        with self._lock:
            self._delay = max(0.0, seconds)

    async def wait_for(self, n: int, timeout: float = 10.0) -> list[Received]:
        """Wait until at least ``n`` requests arrived; works whichever loop/thread serves."""
        deadline = time.monotonic() + timeout
        while len(self.requests) < n:
            if time.monotonic() >= deadline:
                got = [f"{r.method} {r.path} ({len(r.body)} bytes)" for r in self.requests]
                raise AssertionError(
                    f"expected {n} request(s) within {timeout}s, got {len(got)}: {got}"
                )
            await asyncio.sleep(0.01)
        return list(self.requests)

    # -- lifecycle in the current loop ----------------------------------------------------------

    async def __aenter__(self) -> Receiver:
        await self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def _stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._tasks):  # idle keep-alive and delayed replies alike
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._server.wait_closed()
        self._server = None

    # -- lifecycle in a thread ------------------------------------------------------------------

    def start_in_thread(self) -> None:
        """Serve from a daemon thread with its own loop; returns once ``url`` is set."""
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            self._thread_loop = asyncio.get_running_loop()
            self._thread_stop = asyncio.Event()
            try:
                await self._start()
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                raise
            ready.set()
            try:
                await self._thread_stop.wait()
            finally:
                await self._stop()

        self._thread = threading.Thread(
            target=lambda: asyncio.run(main()), name="receiver", daemon=True
        )
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("receiver thread did not start within 10s")
        if failure:
            raise RuntimeError("receiver thread failed to start") from failure[0]

    def stop_thread(self) -> None:
        if self._thread is None:
            return
        if self._thread_loop is not None and self._thread_stop is not None:
            with contextlib.suppress(RuntimeError):  # loop already gone
                self._thread_loop.call_soon_threadsafe(self._thread_stop.set)
        self._thread.join(10)
        self._thread = self._thread_loop = self._thread_stop = None

    # -- HTTP/1.1 -------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = h11.Connection(h11.SERVER)
        try:
            while await self._exchange(conn, reader, writer):
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Only _stop() cancels these tasks; ending quietly keeps asyncio's stream callback
            # from logging the cancellation as an error on Python 3.11.
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _exchange(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request/response cycle; False when the connection should end."""
        request = await _next(conn, reader)
        if not isinstance(request, h11.Request):
            return False
        body = bytearray()
        while True:
            part = await _next(conn, reader)
            if isinstance(part, h11.Data):
                body += part.data
            elif isinstance(part, h11.EndOfMessage):
                break
            else:
                return False
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        headers: dict[str, str] = {}
        for name, value in request.headers:
            key, val = name.decode("latin-1").lower(), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {val}" if key in headers else val
        self.requests.append(
            Received(request.method.decode(), path, headers, bytes(body), time.time(), query)
        )
        with self._lock:
            reply = self._replies.popleft() if self._replies else _DEFAULT
            delay = self._delay
        if delay:
            await asyncio.sleep(delay)
        body = reply.body
        if reply.echo:
            body += "".join(f"{k}: {v}\n" for k, v in headers.items()).encode()
        out = [(k, v) for k, v in reply.headers.items() if k != "content-length"]
        out.append(("content-length", str(len(body))))
        data = conn.send(h11.Response(status_code=reply.status, headers=out))
        if body and request.method != b"HEAD":
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
        writer.write(data)
        await writer.drain()
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE


async def _next(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await reader.read(65536))
