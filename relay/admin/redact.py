"""Keep configured secrets out of what the admin surface shows (error texts can echo them)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

from relay.config import Settings, is_secret_key


class Redactor:
    """Replaces every configured secret in text we show (errors can echo URLs or headers)."""

    def __init__(self, settings: Settings) -> None:
        found: set[str] = {settings.admin.token}
        for integ in settings.integrations.values():
            found.add(integ.secret or "")
            if integ.sqs:
                found |= {integ.sqs.secret_access_key or "", integ.sqs.signing_secret or ""}
        for inst in settings.connectors.values():
            found |= set(_secret_values(inst.raw))
        self._secrets = sorted((x for x in found if len(x) >= 6), key=len, reverse=True)

    def __call__(self, text: str | None) -> str | None:
        if text:
            for secret in self._secrets:
                text = text.replace(secret, "*****")
        return text


def _secret_values(value: Any, key: str = "") -> list[str]:
    """Secret-named keys, and what URLs carry in passwords and query strings (as ``mask`` does)."""
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in _secret_values(v, str(k))]
    if isinstance(value, list):
        return [x for v in value for x in _secret_values(v, key)]
    if not isinstance(value, str):
        return []
    if is_secret_key(key):
        return [value]
    if "://" in value:
        parts = urlsplit(value)
        return [parts.password or "", *(v for _, v in parse_qsl(parts.query))]
    return []
