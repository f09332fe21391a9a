"""A loopback Workflows (Power Automate) webhook: "When a Teams webhook request is received".

A flow's URL is ``/powerautomate/automations/direct/workflows/<id>/triggers/manual/paths/invoke
?api-version=1&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=<secret>``, as Teams' Workflows app hands
it out. A valid request is answered ``202 Accepted`` with an empty body, and the card is posted to
the flow's channel. The real trigger answers 202 first and fails the flow run later; this fake
refuses at once what that run would fail on, so a test sees it: a body that is not the message
envelope with Adaptive Card attachments (``type``, ``version``, a ``body`` list of typed
elements) is ``400 InvalidRequestContent``, one over 28 KB is ``400 MessageSizeExceeded``. Errors
are Logic Apps' JSON (``{"error": {"code", "message"}}``): a bad ``sig`` is 401
``DirectApiInvalidAuthorizationSignature``, an unknown or deleted flow 404 ``WorkflowNotFound``;
``fail()`` scripts any other status (429 with ``Retry-After``, 410, 5xx).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from litestar import Litestar, Request, Response, post

from tests.fakes.server import serve

__all__ = ["CARD_TYPE", "MAX_BYTES", "Flow", "Hit", "TeamsFake", "is_message"]

CARD_TYPE = "application/vnd.microsoft.card.adaptive"
MAX_BYTES = 28 * 1024  # MessageSizeExceeded: "max allowed size is 28672 bytes"
VERSIONS = frozenset({"1.0", "1.1", "1.2", "1.3", "1.4", "1.5"})
BASE = "/powerautomate/automations/direct/workflows"


@dataclass
class Flow:
    id: str
    sig: str
    channel: str
    deleted: bool = False
    posts: list[dict[str, Any]] = field(default_factory=list)  # the envelopes the flow posted

    @property
    def cards(self) -> list[dict[str, Any]]:
        return [a["content"] for post in self.posts for a in post["attachments"]]


@dataclass
class Hit:
    """One request as the trigger saw it and what it answered; ``error`` is None on success."""

    flow: str
    status: int
    error: str | None
    body: bytes
    headers: dict[str, str]
    at: float  # time.time() on arrival


@dataclass
class _Fault:
    status: int
    code: str
    retry_after: int | None


class TeamsFake:
    """``async with TeamsFake() as teams``: ``teams.flow("Support")`` is a webhook URL's flow."""

    def __init__(self) -> None:
        self.url = ""
        self.flows: dict[str, Flow] = {}
        self.hits: list[Hit] = []
        self._faults: deque[_Fault] = deque()
        self._ids = itertools.count(1)

    def flow(self, channel: str) -> Flow:
        n = next(self._ids)
        flow = Flow(
            id=f"{n:08x}a1b2c3d4e5f6a7b8c9d0e1f2", sig=f"SiG{n:04d}secretXyZ", channel=channel
        )
        self.flows[flow.id] = flow
        return flow

    def webhook_url(self, flow: Flow, sig: str | None = None) -> str:
        query = f"api-version=1&sp={quote('/triggers/manual/run', safe='')}&sv=1.0"
        return (
            f"{self.url}{BASE}/{flow.id}/triggers/manual/paths/invoke?{query}&sig={sig or flow.sig}"
        )

    def fail(
        self, status: int, code: str, *, retry_after: int | None = None, times: int = 1
    ) -> None:
        """The next ``times`` requests answer this error instead."""
        self._faults.extend(_Fault(status, code, retry_after) for _ in range(times))

    def rate_limit(self, retry_after: int = 1, times: int = 1) -> None:
        self.fail(429, "TooManyRequests", retry_after=retry_after, times=times)

    # -- server ---------------------------------------------------------------------------------

    async def __aenter__(self) -> TeamsFake:
        self._stack = contextlib.AsyncExitStack()
        self.url = await self._stack.enter_async_context(self._serve())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    @contextlib.asynccontextmanager
    async def _serve(self) -> AsyncIterator[str]:
        @post(BASE + "/{flow_id:str}/triggers/manual/paths/invoke", status_code=202)
        async def invoke(request: Request[Any, Any, Any]) -> Response[Any]:
            raw = await request.body()
            flow_id = request.path_params["flow_id"]
            status, code, retry_after = self._answer(flow_id, request.query_params, raw)
            headers = {k.lower(): v for k, v in request.headers.items()}
            self.hits.append(Hit(flow_id, status, code, raw, headers, time.time()))
            if code is None:
                return Response(b"", status_code=202, media_type="text/plain")
            extra = {"retry-after": str(retry_after)} if retry_after is not None else {}
            message = _MESSAGES.get(code, code)
            body = {"error": {"code": code, "message": message.format(flow=flow_id)}}
            return Response(body, status_code=status, headers=extra)

        app = Litestar([invoke], debug=False, logging_config=None)
        async with serve(app) as url:
            yield url

    def _answer(self, flow_id: str, query: Any, raw: bytes) -> tuple[int, str | None, int | None]:
        flow = self.flows.get(flow_id)
        if flow is None or flow.deleted:
            return 404, "WorkflowNotFound", None
        if query.get("sig") != flow.sig or query.get("sp") != "/triggers/manual/run":
            return 401, "DirectApiInvalidAuthorizationSignature", None
        if self._faults:
            fault = self._faults.popleft()
            return fault.status, fault.code, fault.retry_after
        if len(raw) > MAX_BYTES:
            return 400, "MessageSizeExceeded", None
        try:
            body = json.loads(raw)
        except ValueError:
            return 400, "InvalidRequestContent", None
        if not is_message(body):
            return 400, "InvalidRequestContent", None
        flow.posts.append(body)
        return 202, None, None


_MESSAGES = {
    "WorkflowNotFound": "The workflow '{flow}' could not be found.",
    "DirectApiInvalidAuthorizationSignature": "The provided authorization signature is invalid.",
    "MessageSizeExceeded": f"Message properties size exceeded; max allowed size is {MAX_BYTES}.",
    "InvalidRequestContent": "The request content is not a message with Adaptive Card attachments.",
    "TooManyRequests": "Rate limit is exceeded. Try again later.",
}


def is_message(body: Any) -> bool:
    """The envelope the Workflows templates read, each attachment an Adaptive Card."""
    if not isinstance(body, dict) or body.get("type") != "message":
        return False
    attachments = body.get("attachments")
    if not isinstance(attachments, list) or not attachments:
        return False
    return all(
        isinstance(a, dict) and a.get("contentType") == CARD_TYPE and _is_card(a.get("content"))
        for a in attachments
    )


def _is_card(card: Any) -> bool:
    if not isinstance(card, dict) or card.get("type") != "AdaptiveCard":
        return False
    body = card.get("body")
    return (
        card.get("version") in VERSIONS
        and isinstance(body, list)
        and all(_is_element(e) for e in body)
    )


def _is_element(element: Any) -> bool:
    if not isinstance(element, dict) or not isinstance(element.get("type"), str):
        return False
    if element["type"] == "TextBlock":
        return isinstance(element.get("text"), str)
    if element["type"] == "FactSet":
        facts = element.get("facts")
        return isinstance(facts, list) and all(
            isinstance(f, dict)
            and isinstance(f.get("title"), str)
            and isinstance(f.get("value"), str)
            for f in facts
        )
    return True
