"""HTTP to a CRM: rate-limit buckets, the auth hook, and errors mapped to the outcome contract.

Every CRM call goes through ``CrmHttp.call_api``, so every connector gets the same behaviour:
a token bucket per connector instance and endpoint class, one token refresh on 401 where the
connector can refresh (OAuth) and a clear permanent error where it cannot (static tokens), 429
retried after the CRM's own wait, and a daily-quota error pausing the connector until the reset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import httpx

from relay.connector import ConnectorContext
from relay.crm.options import CrmConfig, RateLimit
from relay.errors import (
    AuthError,
    PauseConnector,
    RetryableError,
    excerpt,
    parse_retry_after,
    raise_for_response,
)


@dataclass(frozen=True)
class Limited:
    """What a rate-limit answer means: wait a little (burst) or until the quota resets (daily)."""

    daily: bool
    retry_after: float | None = None
    reason: str = "rate limit reached"


def next_reset(at: str, tz: str, now: datetime | None = None) -> datetime:
    """The next ``at`` (a time of day) in time zone ``tz``, as an aware UTC datetime."""
    zone = ZoneInfo(tz)
    local_now = (now or datetime.now(UTC)).astimezone(zone)
    reset = datetime.combine(local_now.date(), time.fromisoformat(at), tzinfo=zone)
    if reset <= local_now:
        reset = datetime.combine(local_now.date() + timedelta(days=1), reset.timetz())
    return reset.astimezone(UTC)


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The response body as a JSON object, or {} (error bodies are not always JSON)."""
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class CrmHttp:
    """Mixin for CRM connectors; ``self.config`` is a ``CrmConfig``."""

    vendor: ClassVar[str] = "CRM"  # shown in error messages
    config: CrmConfig
    name: str

    # -- hooks a CRM plugin may override ---------------------------------------------------------

    async def auth_headers(self, ctx: ConnectorContext) -> dict[str, str]:
        """Headers that authenticate a request (an OAuth connector reads its cached token here)."""
        return {}

    async def refresh_auth(self, ctx: ConnectorContext) -> bool:
        """Called once on a 401: get a new token and return True to retry, or False (static)."""
        return False

    def auth_failure(self, response: httpx.Response) -> str:
        """The message for a 401 that refreshing cannot fix: tell the admin what to change."""
        return (
            f"{self.vendor} rejected the credentials of connector {self.name!r} (HTTP 401 "
            f"{excerpt(response.text, 200)}): check its token in config.yaml and run `relay "
            "reload`; its deliveries wait and resume on their own once the token works "
            f"(`relay circuit close {self.name}` sends them at once)"
        )

    def rate_limited(self, response: httpx.Response) -> Limited | None:
        """Is this answer a rate limit? Default: 429, waiting for its Retry-After."""
        if response.status_code == 429:
            return Limited(False, parse_retry_after(response.headers.get("retry-after")))
        return None

    def buckets(self) -> Mapping[str, RateLimit]:
        return {"api": self.config.rate_limit, "search": self.config.search_rate_limit}

    async def api_root(self, ctx: ConnectorContext) -> str:
        """The root that request paths are joined to. An OAuth CRM that learns it from the token
        response (Salesforce ``instance_url``, Zoho ``api_domain``) returns that here."""
        return self.config.base_url or ""

    # -- the one way to call the CRM -------------------------------------------------------------

    async def call_api(
        self,
        ctx: ConnectorContext,
        method: str,
        path: str,
        *,
        what: str,
        bucket: str = "api",
        also: tuple[str, ...] = (),
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        allow: tuple[int, ...] = (),
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """One request to ``path`` (under ``api_root``, or a full URL), rate limited and
        authenticated; non-2xx raises per the outcome contract except the statuses in
        ``allow``, which the caller handles. ``also``: more buckets the request counts in
        (Freshdesk's searches count against the account's limit too), their slots taken after
        ``bucket``'s, just before sending: a slot of the account's is never spent seconds before
        its request goes while the search limit is awaited.
        ``headers`` are added to the auth headers (e.g. Dataverse's ``If-Match: *``, which stops
        a PATCH from creating a record)."""
        limits = self.buckets()
        refreshed = False
        while True:
            sent = {**(headers or {}), **await self.auth_headers(ctx)}
            url = path if "://" in path else await self.api_root(ctx) + path
            # evenly spaced, no bursts: a CRM's rolling window never sees more than its limit
            limit = limits[bucket]
            async with ctx.limiter(bucket, 1, limit.per / limit.requests):
                for extra in also:
                    more = limits[extra]
                    await ctx.limiter(extra, 1, more.per / more.requests).acquire()
                response = await ctx.http.request(
                    method,
                    url,
                    json=json,
                    params=params,
                    headers=sent,
                    timeout=self.config.request_timeout,
                )
            if response.status_code == 401 and not refreshed and await self.refresh_auth(ctx):
                refreshed = True
                continue
            break
        if hasattr(ctx, "status_code"):
            ctx.status_code = response.status_code  # the attempt history shows the last status
        if response.status_code in allow or 200 <= response.status_code < 300:
            return response
        self.raise_for(response, what)
        return response  # unreachable: raise_for always raises

    def raise_for(self, response: httpx.Response, what: str) -> None:
        code = response.status_code
        label = f"{self.vendor} {what}"
        limited = self.rate_limited(response)
        if limited is not None:
            message = f"{label}: HTTP {code} {limited.reason}"
            if limited.daily:
                if limited.retry_after:
                    raise PauseConnector(message, limited.retry_after, status_code=code)
                until = next_reset(self.config.daily_reset, self.config.timezone)
                raise PauseConnector(
                    f"{message}; paused until {until:%Y-%m-%d %H:%M:%S} UTC",
                    until,
                    status_code=code,
                )
            raise RetryableError(message, limited.retry_after, status_code=code)
        if code == 401:
            raise AuthError(f"{label}: {self.auth_failure(response)}", status_code=code)
        raise_for_response(response, label)
