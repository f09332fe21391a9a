"""Owner mapping: the Wildix user on the call → the CRM user who owns the activity.

An explicit ``owners`` map (by email or extension) wins; then, if enabled, the CRM's user directory
is asked for the Wildix user's email (cached); then ``default_owner``. No owner at all is fine:
the CRM then uses the API user.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from relay.crm.phones import Lookups
from relay.wildix.views import Party

FindUser = Callable[[str], Awaitable[str | None]]


class OwnerMapper:
    def __init__(
        self,
        explicit: Mapping[str, str | int],
        default: str | int | None,
        *,
        lookup: bool,
        ttl: float,
    ) -> None:
        self._explicit = {k.strip().lower(): str(v) for k, v in explicit.items()}
        self._default = None if default is None else str(default)
        self._lookup = lookup
        self._found: Lookups[str, str | None] = Lookups(ttl, 5000)

    async def owner_for(self, local: Party | None, find: FindUser) -> str | None:
        if local is not None:
            for key in (local.email, local.extension, local.number):
                if key and key.strip().lower() in self._explicit:
                    return self._explicit[key.strip().lower()]
            if self._lookup and local.email:
                email = local.email.strip().lower()
                found = await self._found.get(email, lambda: find(email))
                if found:
                    return found
        return self._default
