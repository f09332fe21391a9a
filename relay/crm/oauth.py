"""OAuth access tokens for CRM connectors (Salesforce, Zoho, any OAuth CRM): minted when needed,
cached, renewed once when the CRM says the token expired, and refusals explained.

The token lives in the connector's ``ctx.state``, so every process and every restart reuses it:
Zoho issues only ten tokens per ten minutes, and a token per delivery would exhaust that at once.
It is stored with a fingerprint of the connector's config, so after an admin fixes the
credentials in config.yaml a token minted from the old ones is never used again. Renewals are
single-flight per process: a burst of deliveries that all meet the expired token mints one.

A connector subclasses ``OAuthConnector`` and implements ``fetch_token`` (usually one
``request_token`` call) and ``token_refused``; ``token_expired`` tells a 401 that a new token
fixes (an expired session) from one it cannot (a missing scope), which is an ``AuthError``.

A token endpoint that refuses the credentials themselves (a revoked refresh token, a wrong client
secret) stops every delivery of the connector, not one: that is an ``AuthError`` too, so the
connector's circuit breaker holds the deliveries until a probe gets a token (the admin fixed
config.yaml and reloaded). A refusal of the request (a wrong tenant or scope) stays permanent.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from abc import abstractmethod
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import httpx
import msgspec

from relay.connector import ConnectorContext
from relay.crm.http import json_object
from relay.crm.lifecycle import CrmConnector
from relay.crm.options import CrmConfig
from relay.errors import (
    AuthError,
    DeliveryError,
    PermanentError,
    RetryableError,
    excerpt,
    parse_retry_after,
)

# the access token the current delivery (asyncio task) last sent: on a 401, only that token is
# renewed, so deliveries that meet the same expired token together renew it once
_sent: ContextVar[str | None] = ContextVar("relay_crm_oauth_sent", default=None)
EARLY = 60.0  # renew a token with an announced expiry this long before it runs out
# The connector-state key a refused token request leaves, until a token is minted again: the
# incident watcher (relay.admin.watcher) opens an incident while it is there.
AUTH_REFUSED = "auth_refused"
# RFC 6749 5.2: the client's authentication failed, or the grant (refresh token, assertion) is
# invalid, expired or revoked. The other codes refuse the request (its grant type or scope).
CREDENTIALS_REFUSED = frozenset({"invalid_client", "invalid_grant"})


@dataclass(frozen=True)
class Token:
    access_token: str
    api_root: str  # where the API lives for this account (Salesforce instance_url, Zoho api_domain)
    expires_at: float | None = None  # epoch seconds; None: valid until the CRM rejects it

    def fresh(self) -> bool:
        return self.expires_at is None or self.expires_at - EARLY > time.time()


class OAuthConnector(CrmConnector):
    """A CRM connector whose requests carry an OAuth access token it obtains itself."""

    auth_scheme: ClassVar[str] = "Bearer"  # Zoho: "Zoho-oauthtoken"

    def __init__(self, name: str, config: CrmConfig) -> None:
        super().__init__(name, config)
        self._lock = asyncio.Lock()  # one renewal (and one state write) at a time per process
        self._token: Token | None = None
        options = msgspec.to_builtins(config, enc_hook=float)
        self._fingerprint = hashlib.sha256(msgspec.json.encode(options)).hexdigest()[:16]

    # -- what an OAuth CRM implements ------------------------------------------------------------

    @abstractmethod
    async def fetch_token(self, ctx: ConnectorContext) -> Token:
        """Mint a new access token (the CRM's token endpoint, via ``request_token``)."""

    def token_refused(self, error: str, description: str, status: int) -> DeliveryError:
        """The token endpoint said no (``invalid_grant``...): the error that tells what to fix
        (``refusal``); ``status`` is its HTTP status (a 401: the client is unknown)."""
        credentials = error in CREDENTIALS_REFUSED or status == 401
        return self.refusal(
            f"{error}: {description}", "check its OAuth settings in config.yaml", credentials
        )

    def refusal(
        self, detail: str, fix: str, credentials: bool, *, issuer: str | None = None
    ) -> DeliveryError:
        """A token refusal: of the ``credentials`` themselves, an AuthError (every delivery of
        the connector waits behind its circuit breaker until a probe gets a token); else a
        refusal of the request (a wrong tenant or scope), permanent."""
        head = (
            f"{issuer or self.vendor} refused to issue an access token for connector "
            f"{self.name!r} ({detail}). Fix: {fix}"
        )
        if credentials:
            return AuthError(
                f"{head}; run `relay reload` after changing config.yaml: the deliveries wait and "
                "resume on their own once the credentials work (`relay circuit close "
                f"{self.name}` sends them at once)"
            )
        return PermanentError(f"{head}; run `relay reload`, then retry the dead deliveries")

    def token_expired(self, response: httpx.Response) -> bool:
        """Is this 401 one that a new token fixes? (Not, e.g., a missing OAuth scope.)"""
        return True

    def api_base(self, root: str) -> str:
        """The API root under the account's root, e.g. ``root + "/crm/v8"``."""
        return root

    async def observe(self, response: httpx.Response, ctx: ConnectorContext) -> None:
        """Every answer the CRM gave a request (usage headers...)."""

    # -- tokens ----------------------------------------------------------------------------------

    async def token(self, ctx: ConnectorContext) -> Token:
        token = self._token
        if token is None or not token.fresh():
            token = self._stored(await ctx.state.get())
            if token is None or not token.fresh():
                reason = "token about to expire" if token else "no token yet"
                token = await self.renew(ctx, token.access_token if token else None, reason)
            self._token = token
        return token

    def _stored(self, state: Mapping[str, Any]) -> Token | None:
        data = state.get("oauth")
        if not isinstance(data, dict) or data.get("config") != self._fingerprint:
            return None  # none yet, or minted from credentials that are no longer configured
        return Token(data["access_token"], data["api_root"], data.get("expires_at"))

    async def renew(self, ctx: ConnectorContext, stale: str | None, reason: str) -> Token:
        """A new token instead of ``stale``, unless another delivery already replaced it."""
        async with self._lock:
            state = await ctx.state.get()
            current = self._stored(state)
            if current is not None and current.access_token != stale and current.fresh():
                self._token = current
                return current
            self._token = None
            try:
                token = await self.fetch_token(ctx)
            except (AuthError, PermanentError) as exc:  # revoked or wrong: a human must act
                refused = {
                    "at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "reason": exc.message,
                }
                await ctx.state.set({**state, AUTH_REFUSED: refused})
                raise
            issued = int(state.get("tokens_issued") or 0) + 1
            state = {k: v for k, v in state.items() if k != AUTH_REFUSED}
            await ctx.state.set(
                {
                    **state,
                    "oauth": {
                        "config": self._fingerprint,
                        "access_token": token.access_token,
                        "api_root": token.api_root,
                        "expires_at": token.expires_at,
                    },
                    "tokens_issued": issued,
                    "token_issued_at": datetime.now(UTC).isoformat(timespec="seconds"),
                }
            )
            self._token = token
        ctx.log.info("%s: new access token (%s); %d issued so far", self.vendor, reason, issued)
        return token

    async def update_state(self, ctx: ConnectorContext, **changes: Any) -> None:
        """Change the connector state without racing a token renewal's write."""
        async with self._lock:
            await ctx.state.update(**changes)

    async def request_token(
        self, ctx: ConnectorContext, url: str, form: Mapping[str, str]
    ) -> dict[str, Any]:
        """POST an OAuth token request (form-encoded: secrets stay out of URLs and logs)."""
        response = await ctx.http.post(url, data=dict(form), timeout=self.config.request_timeout)
        body = json_object(response)
        what = f"{self.vendor} token endpoint"
        if response.status_code == 429 or response.status_code >= 500:
            raise RetryableError(
                f"{what}: HTTP {response.status_code} {excerpt(response.text, 200)}",
                parse_retry_after(response.headers.get("retry-after")),
                status_code=response.status_code,
            )
        if body.get("error") or not 200 <= response.status_code < 300:
            error = str(body.get("error") or f"HTTP {response.status_code}")
            description = str(body.get("error_description") or excerpt(response.text, 200))
            raise self.token_refused(error, description, response.status_code)
        if not body.get("access_token"):
            raise PermanentError(f"{what}: no access_token in its answer (HTTP 200)")
        return body

    # -- the CrmHttp hooks -----------------------------------------------------------------------

    async def auth_headers(self, ctx: ConnectorContext) -> dict[str, str]:
        token = await self.token(ctx)
        _sent.set(token.access_token)
        return {"authorization": f"{self.auth_scheme} {token.access_token}"}

    async def api_root(self, ctx: ConnectorContext) -> str:
        return self.api_base(self.config.base_url or (await self.token(ctx)).api_root)

    async def call_api(
        self,
        ctx: ConnectorContext,
        method: str,
        path: str,
        *,
        what: str,
        allow: tuple[int, ...] = (),
        **kwargs: Any,
    ) -> httpx.Response:
        """``CrmHttp.call_api``, renewing the token once on a 401 that a new token can fix."""
        response = await super().call_api(
            ctx, method, path, what=what, allow=(*allow, 401), **kwargs
        )
        await self.observe(response, ctx)
        if response.status_code == 401 and 401 not in allow and self.token_expired(response):
            await self.renew(ctx, _sent.get(), f"{what}: HTTP 401")
            response = await super().call_api(
                ctx, method, path, what=what, allow=(*allow, 401), **kwargs
            )
            await self.observe(response, ctx)
        if response.status_code == 401 and 401 not in allow:
            self.raise_for(response, what)  # AuthError with auth_failure's message
        return response
