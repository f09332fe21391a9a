"""What ingest hands the store, and what it gets back."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from relay.store.states import DeliveryState
from relay.wildix import Event, numbers

Key = tuple[str, str]  # (integration_id, body_sha256): what dedupe compares


class RowRefused(Exception):
    """The store refused what one row holds (an integrity or data error), not the store being
    down: the other events of its batch commit without it (relay.ingest.group_commit), and the
    sender is told its event cannot be stored rather than to retry it forever."""

    @classmethod
    def of(cls, exc: BaseException) -> RowRefused:
        """From the driver's error: its first line, short (never the SQL or its parameters)."""
        orig = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the driver's error
        reason = (str(orig).strip().splitlines() or [type(orig).__name__])[0][:200]
        return cls(f"the store cannot hold this event: {reason}")


def column_text(value: str) -> str:
    """A string as the columns derived from an event hold it: PostgreSQL's text types refuse
    NUL, so it becomes U+FFFD on every database alike (one character for one, so the length
    limits checked by relay.wildix.envelope still hold). Nothing is lost: those columns are for
    search and display, and every reader of the event itself parses the raw body, kept
    byte-exact."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def ordering_key(connector: str, event: Event) -> str:
    """Deliveries of one subject (a call, a user's presence) to one connector run in order."""
    return column_text(f"{connector}|{event.integration_id}|{event.call_id or event.id}")


@dataclass(frozen=True, slots=True)
class Incoming:
    """A verified event on its way into the store, with the connectors it was routed to.

    Its digest and phone numbers are worked out when it is made, by the request that brings it:
    that work then overlaps with the commit of the batch before, instead of lengthening its own.
    """

    event: Event
    connectors: Sequence[str]
    transport: str
    meta: dict[str, Any] | None = None
    sha256: str = field(init=False)
    numbers: set[str] = field(init=False)  # what the admin search by phone number looks up

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", hashlib.sha256(self.event.raw).hexdigest())
        object.__setattr__(self, "numbers", numbers.in_data(self.event.data))

    @property
    def key(self) -> Key:
        return (self.event.integration_id, self.sha256)


@dataclass(frozen=True, slots=True)
class Recorded:
    event_id: int
    duplicate: bool
    deliveries: int


def event_row(item: Incoming) -> tuple[Any, ...]:
    """An event's values in EVENT_COLUMNS order."""
    event = item.event
    call_id = event.call_id
    return (
        event.integration_id,
        column_text(event.type),
        column_text(event.id),
        call_id if call_id is None else column_text(call_id),
        item.sha256,
        event.raw,
        event.time,
        item.transport,
        item.meta or {},
    )


# every events column an ingest writes, in event_row's order, but received_at (one value for a
# whole batch)
EVENT_COLUMNS = [
    "integration_id",
    "type",
    "subject_id",
    "call_id",
    "body_sha256",
    "raw",
    "occurred_at",
    "transport",
    "transport_meta",
]

# a new delivery's columns, in delivery_rows' order
DELIVERY_COLUMNS = [
    "event_id",
    "integration_id",
    "connector",
    "ordering_key",
    "state",
    "attempts",
    "next_attempt_at",
    "created_at",
    "updated_at",
]


def delivery_rows(
    event_id: int, event: Event, connectors: Sequence[str], now: datetime
) -> list[tuple[Any, ...]]:
    """New pending deliveries of one stored event, in DELIVERY_COLUMNS order."""
    iid = event.integration_id
    pending = DeliveryState.PENDING.value  # a plain str: the drivers bind it without adapting
    return [
        (event_id, iid, name, ordering_key(name, event), pending, 0, now, now, now)
        for name in connectors
    ]
