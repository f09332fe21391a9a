"""Phone numbers: E.164 normalisation and contact matching with a TTL cache.

CRM phone fields hold whatever a human typed, so a CRM's search is only a broad first pass; the
match is confirmed here on both sides normalised to E.164. Results (misses too) are cached per
connector and process to spare the CRM's search quota, which is usually the tightest one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Generic, TypeVar

import msgspec
import phonenumbers
from cachetools import TTLCache

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
MIN_EXTERNAL_DIGITS = 7  # extensions are 2-6 digits; never look them up in a CRM


class Person(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A CRM contact or lead that a call can be linked to."""

    id: str
    kind: str = "contact"  # "contact" | "lead" (CRMs that have leads)
    name: str | None = None
    phones: list[str] = []
    owner: str | None = None


def to_e164(raw: str | None, region: str | None = None) -> str | None:
    """``+442071838750`` for anything that is possibly a phone number, else None."""
    if not raw:
        return None
    text = raw.strip()
    if text.startswith("00"):
        text = "+" + text[2:]  # international access code, as Wildix sometimes passes it on
    if sum(c.isdigit() for c in text) < MIN_EXTERNAL_DIGITS:
        return None
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def national_digits(e164: str) -> str:
    """The national significant number (``2071838750``): what digit-only CRM indexes hold."""
    return str(phonenumbers.parse(e164, None).national_number)


def reading_regions(number: str, region: str | None) -> list[str | None]:
    """The countries a stored number without a country code is read in, when it is compared to
    ``number``: the caller's own country first (a French customer's contact typed as
    ``06 12 34 56 78``), then ``default_region``. Either way the match is full E.164 equality, so
    a number stored for another country never matches."""
    own = phonenumbers.region_code_for_number(phonenumbers.parse(number, None))
    return list(dict.fromkeys([own if own and own != "001" else None, region]))


def same_number(number: str, stored: str, regions: Iterable[str | None]) -> bool:
    return any(to_e164(stored, r) == number for r in regions)


def pick(number: str, candidates: Iterable[Person], region: str | None) -> Person | None:
    """The first candidate whose phone normalises to ``number``; contacts before leads."""
    regions = reading_regions(number, region)
    confirmed = [p for p in candidates if any(same_number(number, ph, regions) for ph in p.phones)]
    confirmed.sort(key=lambda p: p.kind != "contact")  # stable: the CRM's ranking otherwise
    return confirmed[0] if confirmed else None


class Lookups(Generic[K, V]):
    """A TTL cache whose concurrent misses for one key share a single lookup: ten calls from
    the same number at once cost one CRM search, not ten."""

    def __init__(self, ttl: float, maxsize: int = 20000) -> None:
        self._cache: TTLCache[K, V] = TTLCache(maxsize=maxsize, ttl=ttl)
        self._pending: dict[K, asyncio.Task[V]] = {}

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        if key in self._cache:
            return self._cache[key]
        task = self._pending.get(key)
        if task is None:
            task = self._pending[key] = asyncio.ensure_future(load())
            task.add_done_callback(lambda t: self._settle(key, t))
        return await asyncio.shield(task)  # a waiter's timeout must not cancel the others'

    def _settle(self, key: K, task: asyncio.Task[V]) -> None:
        self._pending.pop(key, None)
        if not task.cancelled() and task.exception() is None:  # failures are not cached
            self._cache[key] = task.result()

    def put(self, key: K, value: V) -> None:
        self._cache[key] = value


Search = Callable[[str], Awaitable[list[Person]]]


class PhoneMatcher:
    """Per-connector cache of E.164 number → confirmed Person (or None for no match)."""

    def __init__(self, ttl: float, maxsize: int = 20000) -> None:
        self._lookups: Lookups[str, Person | None] = Lookups(ttl, maxsize)

    async def match(self, number: str, search: Search, region: str | None) -> Person | None:
        async def load() -> Person | None:
            return pick(number, await search(number), region)

        return await self._lookups.get(number, load)

    def remember(self, number: str, person: Person) -> None:
        """A contact we just created: the CRM's search may not show it for a while."""
        self._lookups.put(number, person)
