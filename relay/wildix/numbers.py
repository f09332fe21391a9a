"""Phone numbers in events: find them (search, erasure) and hide them (logs).

Wildix writes the same number as ``+442071838750``, ``00442071838750`` or ``442071838750``
depending on the field and the payload generation, so numbers are compared as their digits with
the international prefix dropped. Extensions (short) and Wildix ids (keys ending in ``id``) are
not numbers of a person and are left out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from itertools import repeat
from typing import Any

import msgspec

_SEPARATORS = re.compile(r"[\s\-().]")
_PHONE = re.compile(r"^(?:\+|00)?\d{7,15}$")
_NOT_A_NUMBER_KEY = re.compile(r"(?:^id$|id$|Id$|_id$|time$|Time$|^pbx$|^company$)")
# In free text: a run of 7-15 digits, optionally after + or 00, that is not part of a longer
# word, id or decimal (call ids look like ``it_w204517_1764412210.77``).
_EMBEDDED = re.compile(r"\+(\d{7,15})(?!\d)")  # e.g. in recording file names
_NUMBER_CHARS = "+0123456789-(). \t\n\r\f\v"
# not a path segment of a URL either (an AWS account id in an SQS queue URL)
_IN_TEXT = re.compile(r"(?<![\w.+/])(\+?\d{7,15})(?![\w./])")


@lru_cache(maxsize=8192)  # the same few numbers recur in every event of a call, and across calls
def normalize(number: str) -> str | None:
    """``"+44 20 7183 8750"`` → ``"442071838750"``; None if it does not look like a number."""
    compact = _SEPARATORS.sub("", number.strip())
    if not _PHONE.match(compact):
        return None
    if compact.startswith("+"):
        return compact[1:]
    if compact.startswith("00"):
        return compact[2:]
    return compact


@lru_cache(maxsize=1024)
def _may_hold_number(key: str) -> bool:
    return not _NOT_A_NUMBER_KEY.search(key)


def in_data(data: Any) -> set[str]:
    """Every phone number in a decoded Wildix ``data`` object (decoded JSON: keys are str).

    Runs for every stored event, so it walks with a stack rather than recursion, stacks only
    containers, and looks further at a string only if it could hold a number.
    """
    out: set[str] = set()
    stack: list[tuple[str, Any]] = [("", [data])]
    while stack:
        key, node = stack.pop()
        items = node.items() if type(node) is dict else zip(repeat(key), node)
        for k, value in items:
            kind = type(value)
            if kind is str:
                if len(value) < 7:
                    continue
                # nothing but digits, + and separators (cheaper than any regex)
                if not value.strip(_NUMBER_CHARS) and (number := normalize(value)):
                    if _may_hold_number(k):
                        out.add(number)
                elif "+" in value and _may_hold_number(k):
                    out.update(_EMBEDDED.findall(value))
            elif kind is dict or kind is list:
                stack.append((k, value))
    return out


def in_raw(raw: bytes) -> set[str]:
    """Every phone number in a stored body (the migration backfill reads bodies, not Events)."""
    try:
        body = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return set()
    return in_data(body.get("data") if isinstance(body, dict) else None)


def pattern(numbers: Iterable[str]) -> re.Pattern[bytes]:
    """Matches any of these (normalized) numbers in any written form inside raw bytes."""
    alts = "|".join(re.escape(n) for n in sorted(set(numbers), key=len, reverse=True))
    return re.compile(rb"(?<!\d)(?:\+|00)?(?:" + alts.encode() + rb")(?!\d)")


def _hide(m: re.Match[str]) -> str:
    text = m.group(1)
    return text[:3] + "*" * (len(text) - 5) + text[-2:]


def mask(text: str) -> str:
    """``"+442071838750"`` → ``"+44********50"``: enough to tell calls apart, not to dial."""
    return _IN_TEXT.sub(_hide, text)
