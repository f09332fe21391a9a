"""The ``teams`` connector: call cards, missed-call alerts, presence and SMS notices in Teams.

It posts to a Workflows (Power Automate) webhook — the trigger "When a Teams webhook request is
received" with a "Post card in a chat or channel" action, which replaced the retired Office 365
connectors. Such a flow cannot edit what it posted, so a call gets ONE card, on the events listed
in ``post_on``. Cards are Adaptive Cards rendered from sandboxed Jinja templates (defaults in
``plugins/templates/teams``), wrapped in the message envelope the Workflows templates read
(``{"type": "message", "attachments": [{"contentType": …adaptive, "content": card}]}``).
The trigger answers 202 Accepted and runs the flow later: what the flow would refuse (a card
over Teams' 28 KB, a malformed card) is refused here, before posting, with the reason.
"""

from __future__ import annotations

import json
from datetime import UTC
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from relay import (
    MESSAGE_KINDS,
    Connector,
    ConnectorConfig,
    DeliveryContext,
    Event,
    TemplateFile,
    add_filter,
    hookimpl,
    post_once,
    render_checked,
    template_source,
    template_values,
    to_datetime,
)

DEFAULT_POST_ON = ("call:completed", "call:end")
CARD_TYPE = "application/vnd.microsoft.card.adaptive"
# Teams clients render Adaptive Cards up to 1.5 (1.4 on some mobile clients: the defaults use it).
CARD_VERSIONS = frozenset({"1.0", "1.1", "1.2", "1.3", "1.4", "1.5"})
# "The message size limit is 28 KB" (Teams docs); a flow run over it fails with
# MessageSizeExceeded … max allowed size is 28672 bytes, long after the trigger answered 202.
MAX_MESSAGE_BYTES = 28 * 1024


def teams_date(value: Any) -> str:
    """``{{DATE(…, SHORT)}} {{TIME(…)}}``: Teams shows it in each reader's own time zone."""
    when = to_datetime(value)
    if when is None:
        return ""
    stamp = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # strict RFC 3339, as required
    return f"{{{{DATE({stamp}, SHORT)}}}} {{{{TIME({stamp})}}}}"


add_filter("teams_date", teams_date)  # event values: teams_text / teams_link (relay.messages)


def default_template(kind: str) -> str:
    folder = resources.files(__package__) / "templates" / "teams"
    return (folder / f"{kind}.json.j2").read_text(encoding="utf-8")


def envelope(card: dict[str, Any]) -> dict[str, Any]:
    """The message a Workflows webhook takes: one Adaptive Card attachment."""
    return {"type": "message", "attachments": [{"contentType": CARD_TYPE, "content": card}]}


def card(text: str) -> dict[str, Any]:
    """A rendered template as an Adaptive Card; ValueError says what is wrong with it."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = "write values with `| tojson`"
        raise ValueError(f"does not render valid JSON ({exc}); {hint}") from None
    if not isinstance(value, dict) or value.get("type") != "AdaptiveCard":
        raise ValueError('must render an Adaptive Card: a JSON object with "type": "AdaptiveCard"')
    if value.get("version") not in CARD_VERSIONS:
        known = ", ".join(sorted(CARD_VERSIONS))
        raise ValueError(f"`version` must be a string Teams renders ({known})")
    body = value.get("body")
    if not isinstance(body, list) or not body:
        raise ValueError("`body` must be a non-empty list of card elements")
    if not all(isinstance(e, dict) and isinstance(e.get("type"), str) for e in body):
        raise ValueError("every element of `body` must be an object with a `type`")
    size = len(json.dumps(envelope(value), ensure_ascii=False).encode())
    if size > MAX_MESSAGE_BYTES:
        raise ValueError(f"is {size} bytes; Teams takes at most {MAX_MESSAGE_BYTES}")
    return value


def _check_webhook_url(value: str) -> None:
    """https only, since the URL carries its own secret (``sig=``); plain http only to this
    machine (a local forward proxy, a test)."""
    parts = urlsplit(value)
    local = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if not parts.hostname or not (parts.scheme == "https" or (parts.scheme == "http" and local)):
        raise ValueError("`webhook_url` must be an https:// URL (http:// only to localhost)")


class TeamsConfig(ConnectorConfig):
    webhook_url: str  # the Workflows trigger's HTTP URL (its sig= is the secret)
    post_on: list[str] | None = None  # the call events that post
    templates: dict[str, str | TemplateFile] = {}  # overrides, by message kind
    timeout: float = 10.0
    allow_http_links: bool = False  # recording URLs: https only unless the operator opts in

    def __post_init__(self) -> None:
        _check_webhook_url(self.webhook_url)
        if self.post_on is not None and not self.post_on:
            raise ValueError("`post_on` must list at least one event type pattern")
        if self.timeout <= 0:
            raise ValueError("`timeout` must be a positive number of seconds")
        for kind, value in self.templates.items():
            source = template_source(value, f"templates.{kind}", kind, check=card)
            self.templates[kind] = source  # read once, here: a file is not read per delivery


class TeamsConnector(Connector):
    type = "teams"
    Config = TeamsConfig
    config: TeamsConfig

    def __init__(self, name: str, config: TeamsConfig) -> None:
        super().__init__(name, config)
        overrides = config.templates  # read and checked in __post_init__
        self.templates = {k: str(overrides.get(k) or default_template(k)) for k in MESSAGE_KINDS}
        self.post_on = tuple(config.post_on or DEFAULT_POST_ON)

    def render(self, event: Event, ctx: DeliveryContext) -> dict[str, Any] | None:
        values = template_values(event, ctx, allow_http_links=self.config.allow_http_links)
        kind = values["kind"]
        if kind is None:
            return None
        return render_checked(ctx, self.templates[kind], values, card, f"teams template {kind}")

    async def deliver(self, event: Event, ctx: DeliveryContext) -> None:
        async def send(content: dict[str, Any]) -> None:
            async with ctx.limiter("webhook", 4, 1.0):  # Teams throttles past 4 requests a second
                response = await ctx.http.post(
                    self.config.webhook_url, json=envelope(content), timeout=self.config.timeout
                )
            # 202 Accepted; 429 + Retry-After and 5xx retried; other 4xx dead, with the flow's error
            ctx.check_response(response, "teams webhook")

        await post_once(event, ctx, self.post_on, lambda: self.render(event, ctx), send)


@hookimpl
def register_connectors(register: Any) -> None:
    register(TeamsConnector)
