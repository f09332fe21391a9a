"""What the admin lists accept: event filters, cursors and page sizes, checked once here."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import ColumnElement, exists

from relay.admin import schemas as s
from relay.store.tables import deliveries, event_numbers, events
from relay.wildix import numbers

MAX_LIMIT = 500


class BadFilter(ValueError):
    """A filter or cursor the caller must fix (→ HTTP 400, CLI usage error)."""


class EventFilter(msgspec.Struct, kw_only=True, frozen=True):
    integration: str | None = None
    type: str | None = None  # glob: call:* matches call:live:progress
    call_id: str | None = None
    phone: str | None = None  # any written form; compared as digits
    since: datetime | None = None  # received at or after
    until: datetime | None = None  # received before
    status: str | None = None  # has at least one delivery in this state

    def empty(self) -> bool:
        return all(getattr(self, f) in (None, "") for f in self.__struct_fields__)


def glob_to_like(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def event_conditions(f: EventFilter) -> list[ColumnElement[bool]]:
    conds: list[ColumnElement[bool]] = []
    if f.integration:
        conds.append(events.c.integration_id == f.integration)
    if f.type:
        conds.append(events.c.type.like(glob_to_like(f.type), escape="\\"))
    if f.call_id:
        conds.append(events.c.call_id == f.call_id)
    if f.phone:
        number = numbers.normalize(f.phone)
        if number is None:
            raise BadFilter(f"not a phone number: {f.phone!r}")
        conds.append(
            exists().where(
                event_numbers.c.number == number, event_numbers.c.event_id == events.c.id
            )
        )
    if f.since:
        conds.append(events.c.received_at >= f.since)
    if f.until:
        conds.append(events.c.received_at < f.until)
    if f.status:
        check_state(f.status)
        conds.append(
            exists().where(deliveries.c.event_id == events.c.id, deliveries.c.state == f.status)
        )
    return conds


def check_state(state: str | None) -> None:
    if state and state not in s.STATES:
        raise BadFilter(f"unknown delivery state {state!r} (one of {', '.join(s.STATES)})")


# The largest id either database holds (PostgreSQL BIGINT, SQLite INTEGER): a larger number in
# a path, a filter or a cursor names nothing, and must not reach the driver (it overflows there).
ROW_ID_MAX = 2**63 - 1


def is_row_id(value: int) -> bool:
    return 1 <= value <= ROW_ID_MAX


def parse_cursor(cursor: str | None) -> int | None:
    if cursor in (None, ""):
        return None
    try:
        value = int(cursor)
    except ValueError:
        raise BadFilter(f"bad cursor {cursor!r}") from None
    if not is_row_id(value):
        raise BadFilter(f"bad cursor {cursor!r}")
    return value


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise BadFilter(f"limit must be between 1 and {MAX_LIMIT}")
    return limit


def page_of(rows: list[Any], limit: int) -> tuple[list[Any], str | None]:
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, str(rows[-1].id)
    return rows, None
