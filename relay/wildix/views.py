"""The normalized views connectors read instead of Wildix's two payload generations.

Field names are ours and stable; values are lowercased enums, seconds and aware UTC datetimes.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

__all__ = ["Call", "Leg", "Party", "Presence", "Recording", "Sms"]


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
    direction: str = "unknown"
    status: str = "unknown"
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
    generation: str  # "legacy" | "current"
    phase: str  # "start" | "update" | "end" | "record"
    direction: str = "unknown"
    status: str = "unknown"
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
    kind: str  # "user" | "telephony" | "conference"
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
