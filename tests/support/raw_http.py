"""HTTP/1.1 written byte by byte on a plain socket: a client that sends exactly what a test says
(any path bytes, any header bytes, any body) and notices when the server drops the connection
instead of answering, which a library client would hide behind retries or refuse to send."""

from __future__ import annotations

import http.client
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit


class Dropped(AssertionError):
    """The server closed or reset the connection without a complete response."""


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def request_bytes(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> bytes:
    """The request as it goes on the wire; ``content-length`` and ``connection`` are added."""
    lines = [method + b" " + target + b" HTTP/1.1", b"host: relay.test"]
    lines += [name + b": " + value for name, value in headers]
    lines += [b"content-length: " + str(len(body)).encode(), b"connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def exchange(base_url: str, raw: bytes, *, head: bool = False, timeout: float = 30.0) -> Reply:
    """Send ``raw`` whole (as a client that does not read while it sends), then read the reply.

    Raises ``Dropped`` when no complete response arrives: a reset while sending, or a close or
    reset before the status line or the declared body.
    """
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        try:
            sock.sendall(raw)
        except OSError as exc:
            sent_error: OSError | None = exc  # the reply may still be readable
        else:
            sent_error = None
        response = http.client.HTTPResponse(sock, method="HEAD" if head else "GET")
        try:
            response.begin()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            why = f"{type(exc).__name__}: {exc}"
            if sent_error is not None:
                why = f"{type(sent_error).__name__} while sending, then {why}"
            raise Dropped(f"connection dropped without a complete response ({why})") from None
        headers = {k.lower(): v for k, v in response.getheaders()}
        return Reply(response.status, headers, body)
