"""The ``webhook`` connector: forward each event to an HTTP endpoint, optionally signed.

``raw`` mode re-posts the Wildix body byte for byte (a drop-in for a receiver written against
Wildix); ``envelope`` mode wraps it with relay's ids and the normalized view. With a
``signing_secret`` the request is signed the Standard Webhooks way (https://www.standardwebhooks.com/),
with a ``webhook-id`` that stays the same on every retry of a delivery so receivers can dedupe.
A ``user:password@`` in the URL is sent as HTTP basic auth, never as part of the URL.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import time
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import msgspec

from relay import (
    Connector,
    ConnectorConfig,
    ConnectorContext,
    DeliveryContext,
    Event,
    hookimpl,
)

# Set by the connector on every request; a user header of the same name would break the contract.
RESERVED_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "host",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "x-relay-event-id",
        "x-relay-delivery-id",
    }
)


def signing_key(secret: str) -> bytes:
    """Standard Webhooks: ``whsec_`` + base64 is the key's encoding; anything else is the key."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    return secret.encode("utf-8")


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``."""
    payload = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, payload, hashlib.sha256).digest()).decode()


def safe_url(url: str) -> str:
    """scheme://host/path for logs and messages: no credentials, no query (it may hold a token)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


class WebhookConfig(ConnectorConfig):
    url: str
    mode: Literal["raw", "envelope"] = "raw"
    headers: dict[str, str] = {}
    timeout: float = 10.0
    signing_secret: str | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https"):
            got = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
            raise ValueError(f"`url` must be an http:// or https:// URL (got {got})")
        if not parts.hostname:
            raise ValueError("`url` has no host")
        if self.timeout <= 0:
            raise ValueError("`timeout` must be a positive number of seconds")
        clash = sorted(k for k in self.headers if k.lower() in RESERVED_HEADERS)
        if clash:
            raise ValueError(f"`headers` may not set {', '.join(clash)}: relay sets them")
        if "@" in parts.netloc:
            auth = [k for k in self.headers if k.lower() == "authorization"]
            if auth:
                raise ValueError(
                    f"`url` carries user:password@ (sent as basic auth) and `headers.{auth[0]}` "
                    "is set too: keep one of them"
                )
        if self.signing_secret is not None:
            try:
                key = signing_key(self.signing_secret)
            except (binascii.Error, ValueError):
                raise ValueError(
                    "`signing_secret` starts with whsec_ but the rest is not valid base64"
                ) from None
            if not key:
                raise ValueError("`signing_secret` is empty")


class WebhookConnector(Connector):
    """POST every event to ``url``; 2xx is success, 429/5xx retry (Retry-After), 4xx is final."""

    type = "webhook"
    Config = WebhookConfig
    config: WebhookConfig

    def __init__(self, name: str, config: WebhookConfig) -> None:
        super().__init__(name, config)
        secret = config.signing_secret
        self._key = signing_key(secret) if secret is not None else None
        # What is the same on every request, worked out once: the parsed URL, the timeout as
        # the client's request extension, the fixed headers already encoded.
        url = httpx.URL(config.url)
        self._extensions = {"timeout": httpx.Timeout(config.timeout).as_dict()}
        self._headers = [(k.encode(), v.encode()) for k, v in config.headers.items()]
        self._headers.append((b"content-type", b"application/json"))
        if url.userinfo:  # as basic auth (RFC 7617, UTF-8); the URL itself never carries it
            credential = f"{url.username}:{url.password}".encode()
            self._headers.append((b"authorization", b"Basic " + base64.b64encode(credential)))
            url = url.copy_with(username=None, password=None)
        self._url = url
        self._logger = logging.getLogger(f"relay.connector.{name}")

    async def check(self, ctx: ConnectorContext) -> None:
        """Offline on purpose: probing a customer endpoint would deliver a bogus event."""
        WebhookConfig.__post_init__(self.config)

    def body(self, event: Event, ctx: DeliveryContext) -> bytes:
        if self.config.mode == "raw":
            return event.raw
        envelope = {
            "type": event.type,
            "integration_id": event.integration_id,
            "event_id": ctx.event_id,
            "delivery_id": ctx.delivery_id,
            "call_id": event.call_id,
            "time": event.time.isoformat(),
            "view": event.view(),
            "raw": msgspec.Raw(event.raw),  # valid JSON already (parse checked it): as received
        }
        return msgspec.json.encode(envelope)

    def request_headers(self, body: bytes, ctx: DeliveryContext) -> list[tuple[bytes, bytes]]:
        headers = self._headers.copy()
        headers.append((b"x-relay-event-id", b"%d" % ctx.event_id))
        headers.append((b"x-relay-delivery-id", b"%d" % ctx.delivery_id))
        if self._key is not None:
            msg_id, timestamp = f"relay_{ctx.delivery_id}", int(time.time())
            headers.append((b"webhook-id", msg_id.encode()))
            headers.append((b"webhook-timestamp", b"%d" % timestamp))
            headers.append(
                (b"webhook-signature", sign(self._key, msg_id, timestamp, body).encode())
            )
        return headers

    async def deliver(self, event: Event, ctx: DeliveryContext) -> None:
        body = self.body(event, ctx)
        response = await ctx.http.post(
            self._url,
            content=body,
            headers=self.request_headers(body, ctx),
            extensions=self._extensions,
        )
        ctx.check_response(response, "webhook")
        if self._logger.isEnabledFor(logging.DEBUG):  # ctx.log is bound only when used
            ctx.log.debug("posted to %s: HTTP %s", safe_url(self.config.url), response.status_code)


@hookimpl
def register_connectors(register: Any) -> None:
    register(WebhookConnector)
