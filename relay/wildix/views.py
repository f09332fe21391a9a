"""The normalized views connectors read instead of Wildix's two payload generations.

Field names are ours and stable; values are lowercased enums, seconds and aware UTC datetimes.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Literal

import msgspec

__all__ = [
    "EVENT_TYPES",
    "VIEWS",
    "VIEW_PREFIXES",
    "Call",
    "Leg",
    "Party",
    "Presence",
    "Recording",
    "Sms",
    "view_of",
]

# The closed value sets: written as Literals so that route checks read them from the views
# (relay.routing introspects these structs) instead of keeping a copy.
Direction = Literal["inbound", "outbound", "internal", "unknown"]
CallStatus = Literal[
    "ringing", "talking", "hold", "completed", "missed", "busy", "failed", "ended", "unknown"
]
Phase = Literal["start", "update", "end", "record"]
Generation = Literal["legacy", "current"]
PresenceKind = Literal["user", "telephony", "conference"]


class Party(msgspec.Struct, frozen=True, kw_only=True):
    """A call participant under stable names, so connectors never read Wildix field names."""

    kind: str  # "local" | "remote" (anything else Wildix invents, lowercased)
    number: str | None = None  # extension for local, E.164 as given for remote
    name: str | None = None
    email: str | None = None
    user_id: str | None = None
    extension: str | None = None
    department: str | None = None
    group: str | None = None
    device: str | None = None


class Recording(msgspec.Struct, frozen=True, kw_only=True):
    file_name: str
    url: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None  # Wildix sends end 0 while still recording


class Leg(msgspec.Struct, frozen=True, kw_only=True):
    """One element of ``flows[]``: a transfer or a queue hop makes a new leg."""

    index: int
    direction: Direction = "unknown"
    status: CallStatus = "unknown"
    caller: Party | None = None
    callee: Party | None = None
    local: Party | None = None
    remote: Party | None = None
    remote_number: str | None = None
    destination: str | None = None
    service_number: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration: float | None = None  # seconds; Wildix sends ms
    talk_time: float | None = None
    wait_time: float | None = None
    trunk: str | None = None
    queue: str | None = None
    tags: list[str] = []
    recordings: list[Recording] = []


class Call(msgspec.Struct, frozen=True, kw_only=True):
    """The call as one object, whichever generation or phase produced it."""

    id: str
    generation: Generation
    phase: Phase
    direction: Direction = "unknown"
    status: CallStatus = "unknown"
    local: Party | None = None
    remote: Party | None = None
    remote_number: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration: float | None = None
    talk_time: float | None = None
    wait_time: float | None = None
    recordings: list[Recording] = []
    tags: list[str] = []
    queue: str | None = None
    trunk: str | None = None
    service_number: str | None = None
    destination: str | None = None
    end_cause: str | None = None
    end_cause_text: str | None = None
    ended_by: str | None = None
    transcription: bool = False
    legs: list[Leg] = []


class Presence(msgspec.Struct, frozen=True, kw_only=True):
    kind: PresenceKind
    extension: str | None = None
    email: str | None = None
    status: str | None = None
    message: str | None = None
    until: datetime | None = None


class Sms(msgspec.Struct, frozen=True, kw_only=True):
    id: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    status: str | None = None
    reason: str | None = None
    channel: str | None = None
    parts: int | None = None


# Which normalized view (an ``Event`` attribute) each event type carries.
VIEWS: Mapping[str, type[msgspec.Struct]] = {"call": Call, "presence": Presence, "sms": Sms}

# The Wildix event types relay knows (the reference is the Wildix events research notes), each
# with the view it carries; route globs are checked against these. Unverified names from the
# Wildix SDK or third parties are included: refusing a real type would drop its deliveries.
EVENT_TYPES: Mapping[str, str | None] = {
    "call:start": "call",  # legacy (2023) generation
    "call:update": "call",
    "call:end": "call",
    "call:live:progress": "call",
    "call:live:completed": "call",
    "call:live:interrupted": "call",  # third-party docs only
    "call:live:transcription": "call",  # SDK name
    "call:completed": "call",  # analytics record
    "call:transcription:completed": "call",  # third-party receivers only
    "call:summary:completed": "call",  # third-party receivers only
    "presence:user": "presence",
    "presence:telephony": "presence",
    "presence:conference": "presence",
    "conference:live:progress": None,
    "conference:live:join": None,
    "conference:live:transcription": None,  # SDK name
    "chat:channel:created": None,
    "sms:status": "sms",
}


# Types relay does not know yet still get a view by their prefix: every ``call:`` type is a call.
VIEW_PREFIXES: Mapping[str, str] = {"call:": "call"}


def view_of(event_type: str) -> str | None:
    """The view an event of this type carries (None: only the raw ``data``)."""
    if event_type in EVENT_TYPES:
        return EVENT_TYPES[event_type]
    return next((v for p, v in VIEW_PREFIXES.items() if event_type.startswith(p)), None)
