"""``POST /webhooks/{integration_id}`` and ``POST /webhooks``: verify, then parse, then store.

Status codes are an interface Wildix (and users' monitoring) rely on: 200 accepted or duplicate,
401 signature, 404 unknown integration, 400 not a Wildix envelope or integrationId mismatch,
413 too large, 405 not a POST, 503 not committed. Nothing is answered 200 before its commit.

This is the hot path, so it is a plain ASGI handler mounted in the Litestar app: it needs none
of the framework's per-request machinery (signature model, DI, response serialization), which
costs more CPU than verifying, parsing and queueing the event for its commit together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgspec
from litestar import asgi
from litestar.types import Receive, Scope, Send

from relay.ingest.accept import Ingest
from relay.store.records import STORE_ERRORS
from relay.store.rows import RowRefused
from relay.wildix import InvalidEvent, parse
from relay.wildix.signature import verify

log = logging.getLogger("relay.webhook")

_SIGNATURE = b"x-signature"
_ENCODE = msgspec.json.Encoder().encode


class _IntegrationOnly(msgspec.Struct):
    integrationId: str


class _TooLarge(Exception):
    def __init__(self, more: bool = True) -> None:
        super().__init__()
        self.more = more  # the client has more of the body to send


class _Disconnected(Exception):
    """The client went away mid-body: there is nobody to answer and nothing to keep."""


class _Request:
    """What the checks need from the ASGI scope, read once."""

    __slots__ = ("headers", "path", "remote", "unread")

    def __init__(self, scope: Scope) -> None:
        self.headers: dict[bytes, bytes] = dict(scope["headers"])
        self.path: str = scope["raw_path"].decode("latin-1")
        client = scope.get("client")
        self.remote: str | None = client[0] if client else None
        self.unread = False  # refused before its whole body was read (413)

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return value.decode("latin-1") if value is not None else None


@asgi("/webhooks", is_mount=True, copy_scope=False)
async def webhooks(scope: Scope, receive: Receive, send: Send) -> None:
    """Receive one Wildix event: for the integration named in the path, or in the body."""
    if scope["type"] != "http":
        return
    if scope["method"] != "POST":
        await _reply(send, 405, {"error": "method not allowed"}, allow=True)
        return
    # Litestar hands a mount "/<rest>/"; anything but one path segment is not ours
    rest = scope["path"]
    if not rest.startswith("/") or "/" in (path_id := rest.strip("/")):
        await _reply(send, 404, {"error": "not found"})
        return
    ingest: Ingest = scope["app"].state.ingest
    request = _Request(scope)
    try:
        code, body = await _receive(ingest, request, receive, path_id or None)
    except _Disconnected:
        return
    await _reply(send, code, body, drain=receive if request.unread else None)


async def _receive(
    ingest: Ingest, request: _Request, receive: Receive, path_id: str | None
) -> tuple[int, dict[str, Any]]:
    async def reject(
        status: int, reason: str, iid: str | None, body: bytes | None, *, signed: bool = False
    ) -> tuple[int, dict[str, Any]]:
        await ingest.reject(
            transport="webhook",
            reason=reason,
            integration_id=iid,
            status_code=status,
            remote=request.remote,
            body=body,
            meta={"path": request.path, "user_agent": request.header(b"user-agent")},
            signed=signed,
        )
        return status, {"error": reason}

    settings = ingest.settings  # this request's config to its end, whatever a reload does
    limit = settings.server.max_body_size
    try:
        body = await _read_body(receive, request, limit)
    except _TooLarge as exc:
        request.unread = exc.more
        return await reject(413, f"body larger than {limit} bytes", path_id, None)

    iid = path_id
    if iid is None:
        try:
            iid = msgspec.json.decode(body, type=_IntegrationOnly).integrationId
        except (msgspec.DecodeError, RecursionError):
            return await reject(400, "body is not a Wildix envelope with integrationId", None, body)

    integration = settings.integrations.get(iid)
    if integration is None or integration.transport != "webhook" or not integration.secret:
        return await reject(404, "unknown integration", iid, body)

    signature = request.header(_SIGNATURE)
    if not signature:
        return await reject(401, "missing x-signature", iid, body)
    if not verify(body, integration.secret, signature):
        return await reject(401, "bad signature", iid, body)

    try:
        event = parse(body)
    except InvalidEvent as exc:
        return await reject(400, str(exc), iid, body, signed=True)
    if event.integration_id != iid:
        return await reject(
            400, "body integrationId does not match the URL", iid, body, signed=True
        )

    try:
        recorded = await ingest.accept(
            event, transport="webhook", meta={"remote": request.remote}, settings=settings
        )
    except RowRefused as exc:  # the store can never hold this event: a retry cannot help
        return await reject(400, str(exc), iid, body, signed=True)
    except STORE_ERRORS as exc:
        ingest.count_refusal(iid, "unavailable")
        log.error("store unavailable, answering 503: %s", exc, extra={"integration": iid})
        return 503, {"error": "store unavailable, retry later"}
    return 200, {
        "status": "duplicate" if recorded.duplicate else "accepted",
        "event_id": recorded.event_id,
        "deliveries": recorded.deliveries,
    }


async def _read_body(receive: Receive, request: _Request, limit: int) -> bytes:
    """The whole body, refusing more than ``limit`` bytes whether declared up front or not."""
    declared = request.headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge(more=bool(message.get("more_body")))
        chunks.append(chunk)
        if not message.get("more_body"):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _reply(
    send: Send,
    status: int,
    body: dict[str, Any],
    *,
    allow: bool = False,
    drain: Receive | None = None,
) -> None:
    """Answer; with ``drain``, read and drop the rest of the upload before the exchange ends.

    A 413 is decided before the body is read. The answer goes out at once (a client that reads
    while it sends stops there), but uvicorn closes a connection it will not keep alive
    (``Connection: close``, HTTP/1.0) as soon as the answer ends, and closing a socket with
    bytes unread makes the kernel reset it: the client, still sending, gets a reset instead of
    the 413. So the exchange ends only once the client has sent everything, up to
    ``_DRAIN_BYTES`` or ``_DRAIN_SECONDS`` (past those, a reset is what such a client gets).
    """
    payload = _ENCODE(body)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    if allow:
        headers.append((b"allow", b"POST"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if drain is None:
        await send({"type": "http.response.body", "body": payload})
        return
    await send({"type": "http.response.body", "body": payload, "more_body": True})
    await _drain(drain)
    await send({"type": "http.response.body", "body": b""})


_DRAIN_BYTES = 64 * 2**20
_DRAIN_SECONDS = 30.0


async def _drain(receive: Receive) -> None:
    """Read and drop the request body until it ends, the client leaves or a bound is hit."""
    read = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_DRAIN_SECONDS):
            while read <= _DRAIN_BYTES:
                message = await receive()
                if message["type"] == "http.disconnect" or not message.get("more_body"):
                    return
                read += len(message.get("body", b""))
