"""The delivery outcome contract, and the one helper that maps an HTTP response onto it.

return → succeeded; RetryableError → retried on schedule (Retry-After wins when later);
PermanentError → dead, for a human; AuthError → retried, and counted against the connector's
circuit breaker like an outage (rejected credentials are the connector's fault, not the event's);
PauseConnector → this connector's deliveries wait (quota) without burning attempts; any other
exception → retryable, logged with its traceback.
"""

from __future__ import annotations

import email.utils
import time
from datetime import UTC, datetime

import httpx

RETRYABLE_STATUS = frozenset({408, 423, 425, 429, 500, 502, 503, 504, 521, 522, 523, 524, 477})


class DeliveryError(Exception):
    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


class RetryableError(DeliveryError):
    """Try again later: not before ``retry_after`` seconds when the target said so."""

    def __init__(
        self, message: str, retry_after: float | None = None, *, status_code: int | None = None
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after


class PermanentError(DeliveryError):
    """Retrying this event cannot help (a request the target refuses): park it as dead."""


class AuthError(RetryableError):
    """The target rejected the connector's credentials (HTTP 401, Slack ``invalid_auth``, SMTP
    535, an OAuth token endpoint's ``invalid_grant``). A connector that can refresh its token
    catches a 401 once. Otherwise no event of the connector can go until an operator fixes its
    config, so it is not the event's fault: it counts towards the connector's circuit breaker,
    whose open circuit holds the deliveries (attempts refunded) and whose probes find out when
    the credentials work again. With the breaker off (``circuit.failures: 0``) it is retried on
    schedule until ``max_attempts``."""


class PauseConnector(DeliveryError):
    """The account is out of quota: hold every delivery of this connector until ``until``."""

    def __init__(
        self, message: str, until: datetime | float, *, status_code: int | None = None
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.until = until if isinstance(until, datetime) else _from_delay(until)


def _from_delay(seconds: float) -> datetime:
    return datetime.fromtimestamp(time.time() + max(seconds, 0.0), UTC)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def excerpt(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def raise_for_response(response: httpx.Response, what: str = "") -> httpx.Response:
    """2xx passes through; everything else raises the matching outcome error."""
    code = response.status_code
    if 200 <= code < 300:
        return response
    label = f"{what}: " if what else ""
    detail = excerpt(response.text) if response.content else response.reason_phrase
    message = f"{label}HTTP {code} {detail}".strip()
    if code in RETRYABLE_STATUS:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        raise RetryableError(message, retry_after, status_code=code)
    if code == 401:
        hint = "fix them in config.yaml and run `relay reload`; the deliveries wait meanwhile"
        raise AuthError(f"{message}: credentials rejected: {hint}", status_code=code)
    if code < 500:  # other 4xx, and redirects we do not follow: a config problem
        raise PermanentError(message, status_code=code)
    raise RetryableError(message, status_code=code)
