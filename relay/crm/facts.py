"""What is known about one call (or leg) so far, merged from events in whatever order they came.

Wildix sends a call as several events (start, updates, live end, the final record minutes later),
possibly twice and out of order; the live end of the current generation carries no numbers and no
outcome at all. Each event is merged into a ``Facts`` snapshot kept in ``links``, and the CRM
activity is always rendered from the snapshot, never from the single event: a late or duplicate
event can only fill gaps or change nothing, and the final record always wins.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from relay.wildix.views import Call, Leg, Party

PHASE_RANK = {"start": 0, "update": 1, "end": 2, "record": 3}
FINAL_OUTCOMES = frozenset({"completed", "missed", "busy", "failed"})
ANSWERED = frozenset({"talking", "hold", "completed"})
EXTERNAL = frozenset({"inbound", "outbound"})

# Field-by-field: a source of a higher or equal phase overrides, a lower one only fills gaps.
_FIELDS = (
    "direction",
    "remote_number",
    "remote_name",
    "local",
    "started_at",
    "ended_at",
    "duration",
    "talk_time",
    "wait_time",
    "queue",
    "trunk",
    "service_number",
    "destination",
    "end_cause",
    "end_cause_text",
)


class Facts(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The merged snapshot of a call or leg; stored as JSON in the connector's links."""

    call_id: str
    leg: int | None = None
    generation: str | None = None
    rank: int = -1  # the highest phase merged so far (see PHASE_RANK)
    direction: str | None = None
    remote_number: str | None = None
    remote_name: str | None = None
    local: Party | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration: float | None = None
    talk_time: float | None = None
    wait_time: float | None = None
    queue: str | None = None
    trunk: str | None = None
    service_number: str | None = None
    destination: str | None = None
    end_cause: str | None = None
    end_cause_text: str | None = None
    first_seen: datetime | None = None  # the earliest event time: a start when Wildix gave none
    answered: bool = False
    outcome: str | None = None  # completed | missed | busy | failed, once an end said so
    tags: list[str] = []
    recordings: list[str] = []  # URLs when Wildix sent them, else file names

    @property
    def ended(self) -> bool:
        return self.rank >= PHASE_RANK["end"]

    @property
    def final(self) -> bool:
        """Nothing better will come: the final record, or a legacy end (it has no record)."""
        return self.rank == PHASE_RANK["record"] or (self.ended and self.generation == "legacy")

    @property
    def status(self) -> str:
        """in_progress until an end; then the outcome an end gave, else what the live events saw."""
        if not self.ended:
            return "in_progress"
        if self.outcome:
            return self.outcome
        return "completed" if self.answered else "missed"

    @property
    def start_time(self) -> datetime | None:
        """When the call started; legacy events carry no times, so the first event's time."""
        return self.started_at or self.first_seen

    @property
    def total_seconds(self) -> float | None:
        if self.duration is not None:
            return self.duration
        start = self.start_time
        if start and self.ended_at and self.ended:
            return max((self.ended_at - start).total_seconds(), 0.0)
        return None

    def view(self) -> dict[str, Any]:
        out: dict[str, Any] = msgspec.to_builtins(self)
        out.setdefault("local", None)
        return out


def _source(call: Call, leg: Leg | None) -> dict[str, Any]:
    src = leg if leg is not None else call
    out = {
        "direction": src.direction if src.direction != "unknown" else None,
        "remote_number": src.remote_number,
        "remote_name": src.remote.name if src.remote else None,
        "local": src.local,
        "started_at": src.started_at,
        "ended_at": src.ended_at,
        "duration": src.duration,
        "talk_time": src.talk_time,
        "wait_time": src.wait_time,
        "queue": src.queue,
        "trunk": src.trunk,
        "service_number": src.service_number,
        "destination": src.destination,
        "end_cause": call.end_cause,
        "end_cause_text": call.end_cause_text,
    }
    if call.phase in ("start", "update"):  # live counters: meaningful only once the call ended
        out["duration"] = out["talk_time"] = out["wait_time"] = None
    if out["remote_name"] and out["remote_name"] == out["remote_number"]:
        out["remote_name"] = None  # Wildix repeats the number as the name of unknown callers
    return out


def merge(facts: Facts, call: Call, leg: Leg | None, event_time: datetime) -> Facts:
    """A new snapshot with this event folded in; merging the same event again changes nothing."""
    rank = PHASE_RANK.get(call.phase, 1)
    wins = rank >= facts.rank
    values = _source(call, leg)
    if call.phase == "end" and values["ended_at"] is None:
        values["ended_at"] = event_time  # the live end has no times: it is sent as the call ends
    changes: dict[str, Any] = {}
    for name in _FIELDS:
        new, old = values[name], getattr(facts, name)
        if new is not None and (wins or old is None):
            changes[name] = new
    status = (leg or call).status
    if status in ANSWERED:
        changes["answered"] = True
    if rank >= PHASE_RANK["end"] and status in FINAL_OUTCOMES and (wins or not facts.outcome):
        changes["outcome"] = status
    src = leg if leg is not None else call
    changes["tags"] = list(dict.fromkeys([*facts.tags, *src.tags]))
    links = [r.url or r.file_name for r in src.recordings]
    changes["recordings"] = list(dict.fromkeys([*facts.recordings, *links]))
    if facts.first_seen is None or event_time < facts.first_seen:
        changes["first_seen"] = event_time
    changes["generation"] = facts.generation or call.generation
    changes["rank"] = max(rank, facts.rank)
    return msgspec.structs.replace(facts, **changes)


def sources(call: Call, per_leg: bool) -> list[tuple[str, Leg | None]]:
    """(activity key, leg) pairs this event speaks about: the whole call, or each of its legs."""
    if not per_leg:
        return [("call", None)]
    return [(str(leg.index), leg) for leg in call.legs]


def wanted(facts: Facts, log_internal: bool) -> bool | None:
    """True: log it; False: never log it; None: not known yet (no direction seen so far)."""
    if facts.direction in EXTERNAL:
        return True
    if facts.direction == "internal":
        # Wildix may call a leg internal before the trunk resolves; only an end settles it.
        return True if log_internal else (False if facts.ended else None)
    return None
