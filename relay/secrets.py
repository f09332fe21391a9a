"""What counts as a secret in configuration, and how to keep secrets out of what relay shows.

Secrets never reach logs, CLI output, API responses or stored errors: ``mask`` is for printing
config, ``secret_values`` collects the values a ``Redactor`` must scrub from texts we show (a
target's error body can echo a header, a URL or a token), and ``Redactor`` is the one scrubber
every such text goes through.
"""

from __future__ import annotations

import base64
import hmac
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

_SECRET_NAME = re.compile(
    r"token|secret|password|passwd|api[_-]?key|private|credential|webhook_url|authorization"
    r"|cookie",
    re.I,
)
# A header map (a webhook's ``headers``): every value in it is secret, whatever its name, since
# headers are how targets take API keys (``X-Api-Key``, ``Cookie``, vendor-specific names).
_HEADER_MAP = re.compile(r"(^|_)headers$", re.I)
# Credentials in a text we did not configure (a target echoing our request back): the scheme is
# kept so the reader still sees what kind of credential it was.
_AUTH_SCHEME = re.compile(r"\b(bearer|basic)(\s+|%20)([A-Za-z0-9._~+/-]{4,}=*)", re.I)
MASK = "*****"
# Shorter values would scrub ordinary words out of texts; no real secret is that short.
MIN_SECRET_LENGTH = 6
# How short a secret's start, cut off by an excerpt's ellipsis, is still scrubbed.
MIN_PREFIX = 3
ELLIPSIS = "…"


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_NAME.search(key))


def is_header_map(key: str) -> bool:
    return bool(_HEADER_MAP.search(key))


def mask(value: Any, key: str = "") -> Any:
    """A copy with every secret-looking value replaced, for printing."""
    if isinstance(value, dict):
        if is_header_map(key):
            return {k: MASK if v not in (None, "") else v for k, v in value.items()}
        return {k: mask(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v, key) for v in value]
    if key and is_secret_key(key) and value not in (None, ""):
        return MASK
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    return value


def mask_url(url: str) -> str:
    """Userinfo and query strings in URLs carry credentials and tokens."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        host = netloc.rpartition("@")[2]
        user = parts.username if parts.password is not None else None
        netloc = f"{user}:{MASK}@{host}" if user else f"{MASK}@{host}"
    query = MASK if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_secrets(url: str) -> list[str]:
    """What a URL carries that is secret: userinfo (as written, decoded, and as the Basic
    credential it becomes) and query values."""
    parts = urlsplit(url)
    found = [v for _, v in parse_qsl(parts.query)]
    if parts.password is not None:
        user, password = unquote(parts.username or ""), unquote(parts.password)
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        found += [parts.password, password, basic]
    elif parts.username:
        found += [parts.username, unquote(parts.username)]  # a token passed as the user
    return found


def secret_values(value: Any, key: str = "") -> list[str]:
    """Secret-named keys, every header map's values, and what URLs carry (as ``mask`` hides)."""
    if isinstance(value, dict):
        if is_header_map(key):
            return [v for v in value.values() if isinstance(v, str)]
        return [x for k, v in value.items() for x in secret_values(v, str(k))]
    if isinstance(value, list):
        return [x for v in value for x in secret_values(v, key)]
    if not isinstance(value, str):
        return []
    if is_secret_key(key):
        return [value, *url_secrets(value)] if "://" in value else [value]
    if "://" in value:
        return url_secrets(value)
    return []


class Redactor:
    """Replaces every known secret, and any ``Bearer``/``Basic`` credential, in a text we show.

    Built once from the configured secrets (``Settings.secret_values``). It runs on every log
    line, so the common case (a text holding no secret) costs substring tests only.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first: a secret that contains another is replaced whole.
        self._secrets = sorted(
            {s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True
        )

    def learn(self, secrets: Iterable[str]) -> None:
        """A reloaded config's secrets are added, never dropped: a removed integration's secret
        can still turn up in the error of an attempt that was in flight."""
        known = {*self._secrets, *(s for s in secrets if len(s) >= MIN_SECRET_LENGTH)}
        self._secrets = sorted(known, key=len, reverse=True)  # swapped whole: readers see either

    def __call__(self, text: str) -> str:
        if len(text) < MIN_SECRET_LENGTH:  # ids and names: nothing secret fits
            return text
        for secret in self._secrets:  # substring tests are C-fast; most texts hold none
            if secret in text:
                text = text.replace(secret, MASK)
        lowered = text.lower()
        if "bearer" in lowered or "basic" in lowered:
            text = _AUTH_SCHEME.sub(_credential, text)
        if self._secrets and text.endswith(ELLIPSIS):
            text = self._cut_tail(text[: -len(ELLIPSIS)]) + ELLIPSIS
        return text

    def _cut_tail(self, text: str) -> str:
        """An excerpt (relay.errors.excerpt) may end inside a secret: its start must go too."""
        for secret in self._secrets:
            for n in range(min(len(secret) - 1, len(text)), MIN_PREFIX - 1, -1):
                if text.endswith(secret[:n]):
                    return text[:-n] + MASK
        return text


def _credential(m: re.Match[str]) -> str:
    """``Bearer x`` is always a token; ``Basic x`` only when x decodes to ``user:password``
    (so prose such as "Basic authentication failed" stays readable)."""
    scheme, gap, value = m.groups()
    if scheme.lower() == "basic":
        try:
            if b":" not in base64.b64decode(value, validate=True):
                return m.group(0)
        except ValueError:
            return m.group(0)
    return f"{scheme}{gap}{MASK}"


def token_matches(given: str, token: str) -> bool:
    """Constant-time, so response timing says nothing about how much of a guess was right."""
    return hmac.compare_digest(given.encode(), token.encode())
