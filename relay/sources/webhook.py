"""``POST /webhooks/{integration_id}`` and ``POST /webhooks``: verify, then parse, then store.

Status codes are an interface Wildix (and users' monitoring) rely on: 200 accepted or duplicate,
401 signature, 404 unknown integration, 400 not a Wildix envelope or integrationId mismatch,
413 too large, 503 not committed. Nothing is answered 200 before its commit.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from sqlalchemy.exc import SQLAlchemyError

from relay.ingest import Ingest
from relay.signing import HEADER, verify
from relay.wildix import InvalidEvent, parse

log = logging.getLogger("relay.webhook")


class _IntegrationOnly(msgspec.Struct):
    integrationId: str


def _reply(code: int, **body: Any) -> Response[dict[str, Any]]:
    return Response(body, status_code=code)


@post("/webhooks/{integration_id:str}", status_code=200)
async def webhook(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """Receive one Wildix event for the integration named in the path."""
    return await _receive(request, request.path_params["integration_id"])


@post("/webhooks", status_code=200)
async def webhook_any(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """Receive one Wildix event; the integration is the body's ``integrationId``."""
    return await _receive(request, None)


async def _receive(
    request: Request[Any, Any, Any], path_id: str | None
) -> Response[dict[str, Any]]:
    ingest: Ingest = request.app.state.ingest
    remote = request.client.host if request.client else None

    async def reject(
        status: int, reason: str, iid: str | None, body: bytes | None
    ) -> Response[dict[str, Any]]:
        await ingest.reject(
            transport="webhook",
            reason=reason,
            integration_id=iid,
            status_code=status,
            remote=remote,
            body=body,
            meta={"path": request.url.path, "user_agent": request.headers.get("user-agent")},
        )
        return _reply(status, error=reason)

    try:
        body = await request.body()
    except RequestEntityTooLarge:
        limit = ingest.settings.server.max_body_size
        return await reject(413, f"body larger than {limit} bytes", path_id, None)

    iid = path_id
    if iid is None:
        try:
            iid = msgspec.json.decode(body, type=_IntegrationOnly).integrationId
        except msgspec.DecodeError:
            return await reject(400, "body is not a Wildix envelope with integrationId", None, body)

    integration = ingest.settings.integrations.get(iid)
    if integration is None or integration.transport != "webhook" or not integration.secret:
        return await reject(404, "unknown integration", iid, body)

    signature = request.headers.get(HEADER)
    if not signature:
        return await reject(401, "missing x-signature", iid, body)
    if not verify(body, integration.secret, signature):
        return await reject(401, "bad signature", iid, body)

    try:
        event = parse(body)
    except InvalidEvent as exc:
        return await reject(400, str(exc), iid, body)
    if event.integration_id != iid:
        return await reject(400, "body integrationId does not match the URL", iid, body)

    try:
        recorded = await ingest.accept(event, transport="webhook", meta={"remote": remote})
    except (SQLAlchemyError, OSError) as exc:
        ingest.rejected[(iid, "store unavailable")] += 1
        ingest.count_refusal(iid, "unavailable")
        log.error("store unavailable, answering 503: %s", exc, extra={"integration": iid})
        return _reply(503, error="store unavailable, retry later")
    return _reply(
        200,
        status="duplicate" if recorded.duplicate else "accepted",
        event_id=recorded.event_id,
        deliveries=recorded.deliveries,
    )
