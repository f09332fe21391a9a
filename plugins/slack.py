"""The ``slack`` connector: call cards, missed-call alerts, presence and SMS notices in Slack.

Two modes. With a bot ``token`` and a ``channel`` it keeps ONE message per call and edits it as
the call moves on (``chat.postMessage`` on the first event, ``chat.update`` after), so a channel
shows a card per call going ringing → talking → ended. With an incoming ``webhook_url`` nothing
can be edited, so it posts once per call, on the events listed in ``post_on``. Messages are Block
Kit JSON rendered from sandboxed Jinja templates (defaults in ``plugins/templates/slack``).
Plain httpx through ``ctx.http``: the Web API is two JSON endpoints, and relay's retry policy
needs the raw statuses and ``Retry-After`` that an SDK would hide.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from relay import (
    MESSAGE_KINDS,
    AuthError,
    Connector,
    ConnectorConfig,
    ConnectorContext,
    DeliveryContext,
    Event,
    PermanentError,
    RetryableError,
    TemplateFile,
    add_filter,
    hookimpl,
    once_key,
    raise_for_response,
    template_source,
    template_values,
)

DEFAULT_BASE_URL = "https://slack.com/api/"
DEFAULT_POST_ON = ("call:completed", "call:end")
MAX_BLOCKS = 50
# Slack posts about one message per second per channel ("short bursts >1 allowed", docs.slack.dev
# rate limits), webhooks included: 2 per 2 s is 1/s with a burst of 2. Every process of a cluster
# shares each bucket (ctx.limiter). The other methods (chat.update: Tier 3, 50+/min) share one.
POST_PACE = (2, 2.0)
API_PACE = (5, 5.0)
# Web API errors (HTTP 200, {"ok": false}) worth another try; any other needs a human.
RETRYABLE_ERRORS = frozenset(
    {"ratelimited", "internal_error", "service_unavailable", "request_timeout", "fatal_error"}
)
AUTH_ERRORS = frozenset(
    {"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired"}
)
# A card only moves forward: an event of an earlier phase never overwrites a later one.
PHASE_RANK = {"start": 0, "update": 1, "end": 2, "record": 3}
_EMPTY: tuple[Any, ...] = (None, "", [], {}, "unknown")


class SlackApiError(PermanentError):
    """A Web API ``{"ok": false, "error": …}`` that retrying cannot fix."""

    def __init__(self, what: str, error: str) -> None:
        super().__init__(f"{what}: {error}", status_code=200)
        self.error = error


def slack_date(value: Any) -> str:
    """``<!date^…>``: Slack shows it in each reader's own time zone; the fallback text is UTC."""
    try:
        when = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        when = None
    if when is None:
        return ""
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    fallback = when.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(when.timestamp())}^{{date_short_pretty}} {{time}}|{fallback}>"


add_filter("slack_date", slack_date)  # event values: chat_text / chat_plain / chat_link (relay)


def default_template(kind: str) -> str:
    folder = resources.files(__package__) / "templates" / "slack"
    return (folder / f"{kind}.json.j2").read_text(encoding="utf-8")


def payload(text: str) -> dict[str, Any]:
    """A rendered template as a Slack message; ValueError says what is wrong with it."""
    try:
        message = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = "write values with `| tojson`"
        raise ValueError(f"does not render valid JSON ({exc}); {hint}") from None
    if not isinstance(message, dict):
        raise ValueError("must render a JSON object with `text` and/or `blocks`")
    blocks = message.get("blocks")
    if blocks is not None:
        if not isinstance(blocks, list) or not all(
            isinstance(b, dict) and isinstance(b.get("type"), str) for b in blocks
        ):
            raise ValueError("`blocks` must be a list of Block Kit blocks, each with a `type`")
        if len(blocks) > MAX_BLOCKS:
            raise ValueError(f"has {len(blocks)} blocks; Slack takes at most {MAX_BLOCKS}")
    if not message.get("text") and not blocks:
        raise ValueError("renders neither `text` nor `blocks`")
    return message


def _url(value: str, key: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"`{key}` must be an http:// or https:// URL")


class SlackConfig(ConnectorConfig):
    webhook_url: str | None = None  # incoming-webhook mode
    token: str | None = None  # bot mode: a bot token (xoxb-…) with chat:write …
    channel: str | None = None  # … and the channel (ID or name) the bot is a member of
    base_url: str = DEFAULT_BASE_URL  # the Web API; a proxy, or a fake in tests
    post_on: list[str] | None = None  # webhook mode: the call events that post
    templates: dict[str, str | TemplateFile] = {}  # overrides, by message kind
    timeout: float = 10.0
    allow_http_links: bool = False  # recording URLs: https only unless the operator opts in

    def __post_init__(self) -> None:
        if (self.webhook_url is None) == (self.token is None):
            raise ValueError("set either `webhook_url` (incoming webhook) or `token` + `channel`")
        if self.webhook_url is not None:
            _url(self.webhook_url, "webhook_url")
            if self.channel is not None:
                raise ValueError("`channel` is for bot mode; a webhook posts to its own channel")
        elif not self.channel:
            raise ValueError("bot mode (`token`) needs a `channel`")
        elif self.post_on is not None:
            raise ValueError("`post_on` is for webhook mode; bot mode edits one card per call")
        _url(self.base_url, "base_url")
        self.base_url = self.base_url.rstrip("/") + "/"
        if self.post_on is not None and not self.post_on:
            raise ValueError("`post_on` must list at least one event type pattern")
        if self.timeout <= 0:
            raise ValueError("`timeout` must be a positive number of seconds")
        for kind, value in self.templates.items():
            source = template_source(value, f"templates.{kind}", kind, check=payload)
            self.templates[kind] = source  # read once, here: a file is not read per delivery


def _merge(old: dict[str, Any], new: dict[str, Any], newer: bool) -> dict[str, Any]:
    """A later event's known values win; an earlier one only fills gaps (Wildix reorders)."""
    out = dict(old)
    for key, value in new.items():
        if value in _EMPTY:
            continue
        if newer or out.get(key) in _EMPTY:
            out[key] = value
    return out


def _digest(message: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(message, sort_keys=True).encode()).hexdigest()


class SlackConnector(Connector):
    type = "slack"
    Config = SlackConfig
    config: SlackConfig

    def __init__(self, name: str, config: SlackConfig) -> None:
        super().__init__(name, config)
        self.templates = {k: default_template(k) for k in MESSAGE_KINDS}
        self.templates.update((k, str(v)) for k, v in config.templates.items())  # read and checked
        self.post_on = tuple(config.post_on or DEFAULT_POST_ON)
        # bot mode edits one card per call: only its newest state matters; webhook posts are each
        # their own message, so every event of a call is sent
        self.coalesce_calls = config.token is not None

    # -- checks and requests ------------------------------------------------------------------

    async def check(self, ctx: ConnectorContext) -> None:
        """Bot mode asks ``auth.test``; a webhook cannot be probed without posting to it."""
        if self.config.token is not None:
            await self._api(ctx, "auth.test", {})

    async def _api(self, ctx: ConnectorContext, method: str, body: dict[str, Any]) -> Any:
        what = f"slack {method}"
        async with self._pace(ctx, method, body):
            response = await ctx.http.post(
                self.config.base_url + method,
                json=body,
                headers={"authorization": f"Bearer {self.config.token}"},
                timeout=self.config.timeout,
            )
        _check(ctx, response, what)  # 429 + Retry-After, 5xx → retry; other non-200 → final
        try:
            answer = response.json()
        except ValueError:
            raise RetryableError(f"{what}: the reply is not JSON", status_code=200) from None
        if not isinstance(answer, dict):
            raise RetryableError(f"{what}: unexpected reply", status_code=200)
        if answer.get("ok") is True:
            return answer
        error = str(answer.get("error") or "unknown_error")
        if error in RETRYABLE_ERRORS:
            raise RetryableError(f"{what}: {error}", status_code=200)
        if error in AUTH_ERRORS:
            raise AuthError(
                f"{what}: {error}: Slack rejected the bot token of connector {self.name!r}; put a"
                " valid `token` in config.yaml and run `relay reload`: its deliveries wait and"
                " resume on their own once the token works (`relay circuit close"
                f" {self.name}` sends them at once)",
                status_code=200,
            )
        raise SlackApiError(what, error)

    def _pace(
        self, ctx: ConnectorContext, method: str, body: dict[str, Any]
    ) -> AbstractAsyncContextManager[None]:
        """Posts are paced per channel, other methods together; both for the whole cluster."""
        if method == "chat.postMessage":
            return ctx.limiter(f"post:{body.get('channel')}", *POST_PACE)
        return ctx.limiter("web-api", *API_PACE)

    async def _webhook(self, ctx: DeliveryContext, message: dict[str, Any]) -> None:
        async with ctx.limiter("webhook", *POST_PACE):  # a webhook posts to one channel
            response = await ctx.http.post(
                str(self.config.webhook_url), json=message, timeout=self.config.timeout
            )
        _check(ctx, response, "slack webhook")  # the error text (channel_not_found …) is the body

    # -- messages -------------------------------------------------------------------------------

    def render(self, event: Event, ctx: DeliveryContext, call: Any = None) -> dict[str, Any] | None:
        values = template_values(
            event, ctx, call=call, allow_http_links=self.config.allow_http_links
        )
        kind = values["kind"]
        if kind is None:
            return None
        try:
            return payload(ctx.render(self.templates[kind], **values))
        except ValueError as exc:  # TemplateError, or what payload() found wrong
            raise PermanentError(f"slack template {kind}: {exc}") from None
        except Exception as exc:  # a runtime error in an admin's template
            raise PermanentError(f"slack template {kind}: {type(exc).__name__}: {exc}") from None

    async def deliver(self, event: Event, ctx: DeliveryContext) -> None:
        if event.call is not None and self.config.token is not None:
            await self._card(event, ctx)
            return
        if event.call is not None and not any(fnmatchcase(event.type, p) for p in self.post_on):
            ctx.log.debug("%s is not in post_on: nothing to post", event.type)
            return
        key = f"posted:{once_key(event)}"
        if await ctx.links.get(key) is not None:
            ctx.log.info("already posted for %s", key)
            return
        message = self.render(event, ctx)
        if message is None:
            ctx.log.debug("no Slack message for %s events", event.type)
            return
        if self.config.token is not None:
            answer = await self._api(ctx, "chat.postMessage", self._post_body(message))
            await ctx.links.set(key, {"channel": answer.get("channel"), "ts": answer.get("ts")})
        else:
            await self._webhook(ctx, message)
            await ctx.links.set(key, {"at": datetime.now(UTC).isoformat()})

    def _post_body(self, message: dict[str, Any]) -> dict[str, Any]:
        return {"unfurl_links": False, **message, "channel": self.config.channel}

    async def _card(self, event: Event, ctx: DeliveryContext) -> None:
        """One message per call, edited forward; redeliveries and stale events change nothing."""
        assert event.call is not None
        key = f"card:{event.integration_id}:{event.call.id}"
        card = await ctx.links.get(key)
        stamp = [PHASE_RANK.get(event.call.phase, 1), event.time.timestamp()]
        view = event.view()["call"]
        if card is None:
            merged = view
        else:
            merged = _merge(card["call"], view, newer=stamp >= card["stamp"])
            stamp = max(stamp, card["stamp"])
        message = self.render(event, ctx, call=merged)
        if message is None:
            return
        digest = _digest(message)
        if card is not None and digest == card["digest"]:
            ctx.log.info("the card of call %s already shows this", event.call.id)
            if (stamp, merged) != (card["stamp"], card["call"]):  # remember what it taught
                await ctx.links.set(key, {**card, "stamp": stamp, "call": merged})
            return
        state = {"stamp": stamp, "call": merged, "digest": digest}
        if card is not None:
            body = {**message, "channel": card["channel"], "ts": card["ts"]}
            try:
                await self._api(ctx, "chat.update", body)
            except SlackApiError as exc:
                if exc.error != "message_not_found":
                    raise
                ctx.log.warning("the card of call %s was deleted; posting it again", event.call.id)
            else:
                await ctx.links.set(key, {**state, "channel": card["channel"], "ts": card["ts"]})
                return
        answer = await self._api(ctx, "chat.postMessage", self._post_body(message))
        # Right after the post: the window for a duplicate card is this one await.
        await ctx.links.set(key, {**state, "channel": answer["channel"], "ts": answer["ts"]})


def _check(ctx: ConnectorContext, response: Any, what: str) -> None:
    if isinstance(ctx, DeliveryContext):
        ctx.check_response(response, what)
    else:
        raise_for_response(response, what)


@hookimpl
def register_connectors(register: Any) -> None:
    register(SlackConnector)
