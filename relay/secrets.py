"""What counts as a secret in configuration, and how to show configuration without them.

Secrets never reach logs, CLI output or API responses: ``mask`` is for printing config,
``secret_values`` collects the values a redactor must scrub from texts we show (error
messages can echo a URL or a header).
"""

from __future__ import annotations

import hmac
import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

_SECRET_NAME = re.compile(
    r"token|secret|password|passwd|api_?key|private|credential|webhook_url|authorization",
    re.I,
)


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_NAME.search(key))


def mask(value: Any, key: str = "") -> Any:
    """A copy with every secret-looking value replaced, for printing."""
    if isinstance(value, dict):
        return {k: mask(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v, key) for v in value]
    if key and is_secret_key(key) and value not in (None, ""):
        return "*****"
    if isinstance(value, str) and "://" in value:
        return _mask_url(value)
    return value


def _mask_url(url: str) -> str:
    """Query strings and passwords in URLs often carry tokens."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password:
        netloc = netloc.replace(f":{parts.password}@", ":*****@")
    query = "*****" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def secret_values(value: Any, key: str = "") -> list[str]:
    """Secret-named keys, and what URLs carry in passwords and query strings (as ``mask`` does)."""
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in secret_values(v, str(k))]
    if isinstance(value, list):
        return [x for v in value for x in secret_values(v, key)]
    if not isinstance(value, str):
        return []
    if is_secret_key(key):
        return [value]
    if "://" in value:
        parts = urlsplit(value)
        return [parts.password or "", *(v for _, v in parse_qsl(parts.query))]
    return []


def token_matches(given: str, token: str) -> bool:
    """Constant-time, so response timing says nothing about how much of a guess was right."""
    return hmac.compare_digest(given.encode(), token.encode())
