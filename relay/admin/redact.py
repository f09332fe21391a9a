"""Keep configured secrets out of what the admin surface shows (error texts can echo them)."""

from __future__ import annotations

from relay.config import Settings
from relay.secrets import secret_values


class Redactor:
    """Replaces every configured secret in text we show (errors can echo URLs or headers)."""

    def __init__(self, settings: Settings) -> None:
        found: set[str] = {settings.admin.token}
        for integ in settings.integrations.values():
            found.add(integ.secret or "")
            if integ.sqs:
                found |= {integ.sqs.secret_access_key or "", integ.sqs.signing_secret or ""}
        for inst in settings.connectors.values():
            found |= set(secret_values(inst.raw))
        self._secrets = sorted((x for x in found if len(x) >= 6), key=len, reverse=True)

    def __call__(self, text: str | None) -> str | None:
        if text:
            for secret in self._secrets:
                text = text.replace(secret, "*****")
        return text
