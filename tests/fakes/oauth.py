"""What an OAuth server keeps, for the fake CRMs' token endpoints: refresh tokens (revocable),
access tokens (expiring, or invalidated at once by a test), and every grant asked for."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Grant:
    scopes: frozenset[str] = frozenset()
    revoked: bool = False


@dataclass
class Tokens:
    prefix: str  # what the vendor's access tokens look like: "00D…!" (Salesforce), "1000." (Zoho)
    lifetime: float | None = None  # seconds; None: no announced expiry (Salesforce)
    refresh: dict[str, Grant] = field(default_factory=dict)
    access: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (grant type, "ok" or error)

    def new_refresh_token(self, scopes: frozenset[str] = frozenset()) -> str:
        token = f"{self.prefix}rt.{secrets.token_hex(16)}"
        self.refresh[token] = Grant(scopes)
        return token

    def issue(self, source: str | None = None, scopes: frozenset[str] = frozenset()) -> str:
        """A new access token (``source``: the refresh token it came from)."""
        token = f"{self.prefix}{secrets.token_hex(20)}"
        expires = time.time() + self.lifetime if self.lifetime else None
        self.access[token] = {"source": source, "expires": expires, "scopes": scopes}
        return token

    def check(self, token: str) -> dict[str, Any] | None:
        """The access token's grant, if it is still good."""
        info = self.access.get(token)
        if info is None or (info["expires"] is not None and info["expires"] <= time.time()):
            return None
        return info

    def expire_all(self) -> int:
        """Every access token stops working now (a session timeout, an admin's "revoke")."""
        count = len(self.access)
        self.access.clear()
        return count

    def revoke(self, refresh_token: str) -> None:
        """The admin revoked the app's grant: its refresh token and its access tokens die."""
        self.refresh[refresh_token].revoked = True
        for token in [t for t, i in self.access.items() if i["source"] == refresh_token]:
            del self.access[token]

    def usable(self, refresh_token: str | None) -> Grant | None:
        grant = self.refresh.get(refresh_token or "")
        return grant if grant is not None and not grant.revoked else None

    @property
    def issued(self) -> int:
        """How many access tokens the token endpoint handed out."""
        return sum(1 for _, outcome in self.requests if outcome == "ok")
