"""Keep configured secrets out of what the admin surface shows (error texts can echo them)."""

from __future__ import annotations

from relay import secrets
from relay.config import Settings


class Redactor(secrets.Redactor):
    """The shared redactor (relay.secrets) over this configuration's secrets; None passes."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.secret_values())

    def __call__(self, text: str | None) -> str | None:  # type: ignore[override]
        return None if text is None else super().__call__(text)
