"""Dashboard sessions kept server-side, so that logging out ends a session for good."""

from __future__ import annotations

import secrets
from typing import Any

from cachetools import TTLCache

SESSIONS = 1000  # open dashboard logins kept at once; past that the least recently used ends


class Sessions:
    """The dashboard logins this process opened and that have not ended (logout, lifetime).

    In memory and bounded: the cookie only names a session, so a copied cookie stops working at
    logout. Being full or restarting ends sessions (log in again), never revives one.
    """

    def __init__(self, lifetime: float, capacity: int = SESSIONS) -> None:
        self._open: TTLCache[str, bool] = TTLCache(capacity, lifetime)

    def open(self) -> str:
        sid = secrets.token_urlsafe(24)
        self._open[sid] = True
        return sid

    def is_open(self, sid: Any) -> bool:
        return isinstance(sid, str) and self._open.get(sid, False)

    def close(self, sid: Any) -> None:
        if isinstance(sid, str):
            self._open.pop(sid, None)
