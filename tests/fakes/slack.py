"""A loopback Slack: incoming webhooks and the Web API methods relay uses, with Slack's shapes.

Incoming webhooks answer ``200 ok`` (text/plain) or an error string with a status (400
``invalid_payload``/``no_text``/``invalid_blocks``, 404 ``no_service``/``channel_not_found``, 410
``channel_is_archived``, 500 ``rollup_error``). The Web API answers JSON, errors included, with
HTTP 200 (``{"ok": false, "error": "channel_not_found"}``), except rate limiting: 429, a
``Retry-After`` header and ``ratelimited``, which it also answers to a channel's posts beyond one
a second past a small burst (``chat.postMessage`` and webhooks: Slack's "1 per second, short
bursts >1 allowed"). It requires ``Authorization: Bearer <token>``
(``not_authed`` / ``invalid_auth``). The channels keep their messages, every version of each,
so a test asserts on what the channel finally shows. Reference: shared/reference/crm-apis.md §6.
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

from litestar import Litestar, Request, Response, post

from tests.fakes.asgi import serve

__all__ = ["Channel", "Hit", "Message", "Pace", "SlackFake", "text_objects"]

MAX_TEXT = 40_000
MAX_BLOCKS = 50


@dataclass
class Message:
    channel: str
    ts: str
    versions: list[dict[str, Any]]  # what the message showed: as posted, then after each edit
    via: str  # "api" or "webhook"

    @property
    def text(self) -> str:
        return str(self.versions[-1].get("text") or "")

    @property
    def blocks(self) -> list[dict[str, Any]]:
        return list(self.versions[-1].get("blocks") or [])

    @property
    def edits(self) -> int:
        return len(self.versions) - 1


@dataclass
class Channel:
    id: str
    name: str
    archived: bool = False
    deleted: bool = False
    messages: list[Message] = field(default_factory=list)


@dataclass
class Hit:
    """One request as Slack saw it and what it answered; ``error`` is None on success."""

    endpoint: str  # "chat.postMessage", "chat.update", "auth.test", ... or "webhook"
    status: int
    error: str | None
    body: Any
    headers: dict[str, str]
    at: float  # time.time() on arrival


class Pace:
    """A channel's posts: a bucket of ``burst`` that refills ``rate`` a second, as Slack paces
    posting; ``refused`` counts the posts it answered 429."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._tokens, self._at = float(burst), time.monotonic()
        self.refused = 0

    def allow(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1:
            self.refused += 1
            return False
        self._tokens -= 1
        return True


@dataclass
class _Fault:
    status: int
    error: str
    retry_after: int | None


class SlackFake:
    """``async with SlackFake() as slack``: ``slack.api_url`` is a bot's ``base_url``."""

    def __init__(
        self,
        token: str = "xoxb-4242-1717-fakebottoken",
        *,
        post_rate: float = 1.0,
        post_burst: int = 3,
    ) -> None:
        self.token = token
        self.post_rate, self.post_burst = post_rate, post_burst
        self.paces: dict[str, Pace] = {}  # channel id → its posting pace
        self.url = ""
        self.channels: dict[str, Channel] = {}
        self.hooks: dict[str, str] = {}  # "T…/B…/secret" → channel id
        self.hits: list[Hit] = []
        self._faults: dict[str, deque[_Fault]] = {}
        self._ids = itertools.count(1)
        self._ts = itertools.count(1)

    # -- the workspace, as a test sets it up ----------------------------------------------------

    def channel(self, name: str, *, archived: bool = False) -> Channel:
        chan = Channel(id=f"C{next(self._ids):08d}", name=name.lstrip("#"), archived=archived)
        self.channels[chan.id] = chan
        return chan

    def webhook(self, channel: Channel) -> str:
        """A new incoming-webhook URL that posts to ``channel``."""
        n = next(self._ids)
        path = f"T0000FAKE/B{n:08d}/whsecret{n:016d}"
        self.hooks[path] = channel.id
        return f"{self.url}/services/{path}"

    def fail(
        self,
        endpoint: str,
        error: str,
        *,
        status: int = 200,
        retry_after: int | None = None,
        times: int = 1,
    ) -> None:
        """The next ``times`` requests to ``endpoint`` answer this error instead."""
        queue = self._faults.setdefault(endpoint, deque())
        queue.extend(_Fault(status, error, retry_after) for _ in range(times))

    def rate_limit(self, endpoint: str, retry_after: int = 1, times: int = 1) -> None:
        body = "ratelimited" if endpoint != "webhook" else "rate_limited"
        self.fail(endpoint, body, status=429, retry_after=retry_after, times=times)

    def messages(self, name: str) -> list[Message]:
        return next(c for c in self.channels.values() if c.name == name.lstrip("#")).messages

    def calls(self, endpoint: str) -> list[Hit]:
        return [h for h in self.hits if h.endpoint == endpoint]

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    # -- server ---------------------------------------------------------------------------------

    async def __aenter__(self) -> SlackFake:
        self._stack = contextlib.AsyncExitStack()
        self.url = await self._stack.enter_async_context(self._serve())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    @contextlib.asynccontextmanager
    async def _serve(self) -> AsyncIterator[str]:
        @post("/api/{method:str}", status_code=200)
        async def api(request: Request[Any, Any, Any]) -> Response[Any]:
            return await self._api(request, request.path_params["method"])

        @post("/services/{path:path}", status_code=200)
        async def hook(request: Request[Any, Any, Any]) -> Response[str]:
            return await self._hook(request, request.path_params["path"].strip("/"))

        app = Litestar([api, hook], debug=False, logging_config=None)
        async with serve(app) as url:
            yield url

    def _record(self, endpoint: str, status: int, error: str | None, body: Any, req: Any) -> None:
        headers = {k.lower(): v for k, v in req.headers.items()}
        self.hits.append(Hit(endpoint, status, error, body, headers, time.time()))

    def _fault(self, endpoint: str) -> _Fault | None:
        queue = self._faults.get(endpoint)
        return queue.popleft() if queue else None

    # -- incoming webhooks ----------------------------------------------------------------------

    async def _hook(self, request: Request[Any, Any, Any], path: str) -> Response[str]:
        raw = await request.body()
        status, answer, retry_after = self._hook_answer(path, raw)
        self._record("webhook", status, None if answer == "ok" else answer, raw, request)
        headers = {"retry-after": str(retry_after)} if retry_after is not None else {}
        return Response(answer, status_code=status, media_type="text/plain", headers=headers)

    def _hook_answer(self, path: str, raw: bytes) -> tuple[int, str, int | None]:
        if path not in self.hooks:
            return 404, "no_service", None
        fault = self._fault("webhook")
        if fault is not None:
            return fault.status, fault.error, fault.retry_after
        try:
            body = json.loads(raw)
        except ValueError:
            return 400, "invalid_payload", None
        if not isinstance(body, dict):
            return 400, "invalid_payload", None
        problem = _message_problem(body)
        if problem is not None:
            return 400, problem, None
        chan = self.channels[self.hooks[path]]
        if not self._paced(chan):
            return 429, "rate_limited", 1
        if chan.deleted:
            return 404, "channel_not_found", None
        if chan.archived:
            return 410, "channel_is_archived", None
        chan.messages.append(Message(chan.id, self._next_ts(), [_shown(body)], "webhook"))
        return 200, "ok", None

    # -- Web API --------------------------------------------------------------------------------

    async def _api(self, request: Request[Any, Any, Any], method: str) -> Response[Any]:
        raw = await request.body()
        try:
            body: Any = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        status, answer, retry_after = self._api_answer(request, method, body)
        error = None if answer.get("ok") else answer.get("error")
        self._record(method, status, error, body, request)
        headers = {"retry-after": str(retry_after)} if retry_after is not None else {}
        return Response(answer, status_code=status, headers=headers)

    def _api_answer(
        self, request: Request[Any, Any, Any], method: str, body: Any
    ) -> tuple[int, dict[str, Any], int | None]:
        handlers = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
        }
        if method not in handlers:
            return 404, {"ok": False, "error": "unknown_method"}, None
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return 200, {"ok": False, "error": "not_authed"}, None
        if auth.removeprefix("Bearer ") != self.token:
            return 200, {"ok": False, "error": "invalid_auth"}, None
        fault = self._fault(method)
        if fault is not None:
            return fault.status, {"ok": False, "error": fault.error}, fault.retry_after
        if not isinstance(body, dict):
            return 200, {"ok": False, "error": "invalid_json"}, None
        if method == "chat.postMessage":
            chan = self._find(body.get("channel"), by_name=True)
            if chan is not None and not self._paced(chan):
                return 429, {"ok": False, "error": "ratelimited"}, 1
        return 200, handlers[method](body), None

    def _paced(self, chan: Channel) -> bool:
        """Whether the channel takes one more post now (Slack's per-channel posting pace)."""
        pace = self.paces.get(chan.id)
        if pace is None:
            pace = self.paces[chan.id] = Pace(self.post_rate, self.post_burst)
        return pace.allow()

    def refused(self, name: str) -> int:
        """How many posts to channel ``name`` were answered 429 for its pace."""
        chan = next(c for c in self.channels.values() if c.name == name.lstrip("#"))
        pace = self.paces.get(chan.id)
        return pace.refused if pace is not None else 0

    def _auth_test(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://acme-fake.slack.com/",
            "team": "ACME",
            "user": "relay",
            "team_id": "T0000FAKE",
            "user_id": "U0000RELAY",
            "bot_id": "B0000RELAY",
        }

    def _find(self, ref: Any, *, by_name: bool) -> Channel | None:
        if not isinstance(ref, str):
            return None
        chan = self.channels.get(ref)
        if chan is None and by_name:  # chat.postMessage takes a name; chat.update wants the ID
            chan = next((c for c in self.channels.values() if c.name == ref.lstrip("#")), None)
        return None if chan is None or chan.deleted else chan

    def _post_message(self, body: dict[str, Any]) -> dict[str, Any]:
        chan = self._find(body.get("channel"), by_name=True)
        if chan is None:
            return {"ok": False, "error": "channel_not_found"}
        if chan.archived:
            return {"ok": False, "error": "is_archived"}
        problem = _message_problem(body)
        if problem is not None:
            return {"ok": False, "error": problem}
        message = Message(chan.id, self._next_ts(), [_shown(body)], "api")
        chan.messages.append(message)
        return {"ok": True, "channel": chan.id, "ts": message.ts, "message": _as_slack(message)}

    def _update(self, body: dict[str, Any]) -> dict[str, Any]:
        chan = self._find(body.get("channel"), by_name=False)
        if chan is None:
            return {"ok": False, "error": "channel_not_found"}
        message = next((m for m in chan.messages if m.ts == body.get("ts")), None)
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        if message.via != "api":
            return {"ok": False, "error": "cant_update_message"}
        problem = _message_problem(body)
        if problem is not None:
            return {"ok": False, "error": problem}
        before = message.versions[-1]
        message.versions.append(
            {  # omitted blocks are kept (Slack's documented behaviour)
                "text": body.get("text", before.get("text")),
                "blocks": body["blocks"] if "blocks" in body else before.get("blocks"),
            }
        )
        return {
            "ok": True,
            "channel": chan.id,
            "ts": message.ts,
            "text": message.text,
            "message": _as_slack(message),
        }

    def delete(self, message: Message) -> None:
        """As a user deleting the message in Slack would."""
        self.channels[message.channel].messages.remove(message)

    def _next_ts(self) -> str:
        return f"1764412210.{next(self._ts):06d}"


def _message_problem(body: dict[str, Any]) -> str | None:
    """Slack's own validation of a message body, as its error string."""
    text, blocks = body.get("text"), body.get("blocks")
    if blocks is not None and (
        not isinstance(blocks, list)
        or len(blocks) > MAX_BLOCKS
        or not all(isinstance(b, dict) and isinstance(b.get("type"), str) for b in blocks)
    ):
        return "invalid_blocks"
    if blocks is not None and any(_bad_text_object(o) for o in text_objects(blocks)):
        return "invalid_blocks"
    if not text and not blocks:
        return "no_text"
    if isinstance(text, str) and len(text) > MAX_TEXT:
        return "msg_too_long"
    return None


def text_objects(value: Any) -> list[dict[str, Any]]:
    """Every Block Kit text object (``{"type": "mrkdwn"|"plain_text", "text": …}``) in blocks."""
    found: list[dict[str, Any]] = []
    if isinstance(value, dict):
        if value.get("type") in ("mrkdwn", "plain_text") and "text" in value:
            found.append(value)
        for item in value.values():
            found += text_objects(item)
    elif isinstance(value, list):
        for item in value:
            found += text_objects(item)
    return found


def _bad_text_object(obj: dict[str, Any]) -> bool:
    """Slack's text-object rules: 1-3000 characters, ``verbatim`` only on mrkdwn, ``emoji``
    only on plain_text."""
    text = obj.get("text")
    if not isinstance(text, str) or not 1 <= len(text) <= 3000:
        return True
    wrong = "emoji" if obj["type"] == "mrkdwn" else "verbatim"
    return wrong in obj


def _shown(body: dict[str, Any]) -> dict[str, Any]:
    return {"text": body.get("text"), "blocks": body.get("blocks")}


def _as_slack(message: Message) -> dict[str, Any]:
    return {
        "type": "message",
        "bot_id": "B0000RELAY",
        "ts": message.ts,
        "text": message.text,
        "blocks": message.blocks,
    }
