"""Wildix ``data`` → normalized views, read defensively.

Everything below the envelope degrades to None instead of raising: Wildix documents neither
generation fully, and a rejected webhook is lost after its few retries.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from relay.wildix.views import Call, Leg, Party, Presence, Recording, Sms

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_ID = 255  # the longest id the store keeps in a column of its own (events.subject_id, call_id)


# -- tolerant readers: each returns None (or empty) for anything unexpected -----------------


def _obj(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _str(v: Any) -> str | None:
    """Wildix mixes null, "" and the odd number for textual ids; all "no value" become None."""
    if isinstance(v, str):
        return v.strip() or None
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return None


def _lower(v: Any) -> str | None:
    s = _str(v)
    return s.lower() if s else None


def _strs(v: Any) -> list[str]:
    return [s for x in v if (s := _str(x))] if isinstance(v, list) else []


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    try:
        n = float(v)  # JSON ints are unbounded; float() may overflow
    except OverflowError:
        return None
    return n if math.isfinite(n) else None


def _secs(v: Any) -> float | None:
    n = _num(v)
    return None if n is None else n / 1000


def _ms_time(v: Any) -> datetime | None:
    n = _num(v)
    if n is None or n <= 0:  # 0 means "not yet" (recordingsData end while recording)
        return None
    try:
        return EPOCH + timedelta(milliseconds=n)
    except OverflowError:
        return None


def _time(v: Any) -> datetime | None:
    """Epoch ms or ISO-8601: Wildix uses both for the same concept across event types."""
    if not isinstance(v, str):
        return _ms_time(v)
    try:
        dt = datetime.fromisoformat(v.strip())
    except ValueError:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _total(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(sum(present), 3) if present else None


# -- calls ------------------------------------------------------------------------------------

_LEGACY_PHASES = {"call:start": "start", "call:update": "update", "call:end": "end"}
_CURRENT_PHASES = {
    "call:live:progress",
    "call:live:completed",
    "call:live:interrupted",
    "call:completed",
}
_DIRECTIONS = {"INBOUND": "inbound", "OUTBOUND": "outbound", "INTERNAL": "internal"}
_STATUSES = {"CONNECTING": "ringing", "RINGING": "ringing", "TALKING": "talking", "HOLD": "hold"}
_STATUSES |= {s: s.lower() for s in ("COMPLETED", "MISSED", "BUSY", "FAILED")}
_FINAL_FAILURES = frozenset({"missed", "busy", "failed"})
_BUSY_CAUSE = "17"  # Q.850 "user busy"
_FLOW_KEYS = ("caller", "callee", "remotePhone", "direction", "destination")
_NO_LEG = Leg(index=0)


def _status(v: Any) -> str:
    s = _str(v)
    return _STATUSES.get(s.upper(), "unknown") if s else "unknown"


def _ended(status: str, end_cause: str | None) -> str:
    """Cause 17 is more precise than "missed", but never overrides an answered call."""
    return "busy" if end_cause == _BUSY_CAUSE and status != "completed" else status


def _party(v: Any) -> Party | None:
    if not isinstance(v, dict):
        return None
    return Party(
        kind=_lower(v.get("type")) or "unknown",
        number=_str(v.get("phone")),
        name=_str(v.get("name")),
        email=_str(v.get("email")),
        user_id=_str(v.get("userId")),
        extension=_str(v.get("userExtension")),
        department=_str(v.get("userDepartment")),
        group=_str(v.get("groupName")),
        device=_str(v.get("userDevice")),
    )


def _sides(caller: Party | None, callee: Party | None) -> tuple[Party | None, Party | None]:
    """(local, remote); on an internal call both are local and the caller wins."""
    both = (caller, callee)
    local = next((p for p in both if p is not None and p.kind == "local"), None)
    remote = next((p for p in both if p is not None and p.kind == "remote"), None)
    return local, remote


def _recordings(flow: dict[str, Any]) -> list[Recording]:
    """recordingsData carries times/urls; bare ``recordings`` names fill any gap."""
    detailed = flow.get("recordingsData")
    out = [
        Recording(
            file_name=name,
            url=_str(r.get("url")),
            started_at=_ms_time(r.get("start")),
            ended_at=_ms_time(r.get("end")),
        )
        for r in (detailed if isinstance(detailed, list) else [])
        if isinstance(r, dict) and (name := _str(r.get("fileName")))
    ]
    known = {r.file_name for r in out}
    out += [Recording(file_name=n) for n in _strs(flow.get("recordings")) if n not in known]
    return out


def _leg(flow: dict[str, Any], position: int) -> Leg:
    caller, callee = _party(flow.get("caller")), _party(flow.get("callee"))
    local, remote = _sides(caller, callee)
    direction = _DIRECTIONS.get((_str(flow.get("direction")) or "").upper(), "unknown")
    remote_number = None
    if direction != "internal":  # docs show INTERNAL + an external remotePhone before resolving
        remote_number = _str(flow.get("remotePhone")) or (remote.number if remote else None)
    index = flow.get("flowIndex")
    return Leg(
        index=index if isinstance(index, int) and not isinstance(index, bool) else position,
        direction=direction,
        status=_status(flow.get("callStatus") or flow.get("status")),
        caller=caller,
        callee=callee,
        local=local,
        remote=remote,
        remote_number=remote_number,
        destination=_str(flow.get("destination")),
        service_number=_str(flow.get("serviceNumber")),
        started_at=_ms_time(flow.get("startTime")),
        ended_at=_ms_time(flow.get("endTime")),
        duration=_secs(flow.get("duration")),
        talk_time=_secs(flow.get("talkTime")),
        wait_time=_secs(flow.get("waitTime")),
        trunk=_str(flow.get("trunkName")),
        queue=_str(flow.get("queueName")),
        tags=_strs(flow.get("tags")),
        recordings=_recordings(flow),
    )


def call_id_of(etype: str, envelope_id: str, raw_data: Any) -> str:
    """The id every event about one call shares, without normalizing the rest (ingest needs
    only this to order deliveries)."""
    data = _obj(raw_data)
    src = data
    if etype not in _LEGACY_PHASES and etype not in _CURRENT_PHASES:
        src = _obj(data.get("call")) or data  # transcription/summary: data.call if present
    return _id(src.get("id")) or _id(data.get("id")) or envelope_id


def _id(v: Any) -> str | None:
    """An id from ``data``; one longer than the store keeps is no id (the envelope's stands in,
    itself bounded by relay.wildix.envelope): junk below the envelope never fails an event."""
    s = _str(v)
    return s if s is None or len(s) <= MAX_ID else None


def call_view(etype: str, envelope_id: str, raw_data: Any) -> Call:
    """Every ``call:*`` type yields a Call (at least id + phase) so call_id always correlates."""
    data = _obj(raw_data)
    call_id = call_id_of(etype, envelope_id, data)
    if etype in _LEGACY_PHASES:
        return _legacy_call(call_id, _LEGACY_PHASES[etype], data)
    trigger = _str(data.get("eventTrigger"))
    src, final = data, None  # final: the status of an ended call when the legs say no better
    if etype == "call:live:progress":
        phase = "start" if trigger == "call.start" else "update"
    elif etype == "call:live:completed":
        phase, final = "end", "ended"  # minimal body: the outcome is only in call:completed
    elif etype == "call:live:interrupted":  # undocumented ("call ends due to an error")
        phase, final = "end", "failed"
    elif etype == "call:completed":
        phase, final = "record", "unknown"
    else:  # call:transcription:completed, call:summary:completed...: data.call if present
        phase, src = "update", _obj(data.get("call")) or data
    flows = src.get("flows")  # call:live:completed sends a count here, not a list
    if isinstance(flows, dict):
        flows = [flows]
    elif flows is None and any(k in src for k in _FLOW_KEYS):
        flows = [src]  # a flat call object (transcription/summary events) is one leg
    if not isinstance(flows, list):
        flows = []
    legs = [_leg(f, i) for i, f in enumerate(flows) if isinstance(f, dict)]
    # The primary leg is the one with the outside party: it gives direction, parties, status.
    primary = next((leg for leg in legs if leg.remote is not None), legs[0] if legs else _NO_LEG)
    if final is None:
        status = primary.status
    elif any(leg.status == "completed" for leg in legs):
        status = "completed"  # a queue call answered on a later leg was not missed
    else:
        status = primary.status if primary.status in _FINAL_FAILURES else final
    if final is not None:
        status = _ended(status, _str(src.get("endCause")))
    transcription = trigger == "call.transcription" or "transcription" in etype
    return _assemble(call_id, "current", phase, status, src, legs, primary, transcription)


def _assemble(
    call_id: str,
    generation: str,
    phase: str,
    status: str,
    src: dict[str, Any],
    legs: list[Leg],
    primary: Leg,
    transcription: bool,
) -> Call:
    starts = [leg.started_at for leg in legs if leg.started_at]
    ends = [leg.ended_at for leg in legs if leg.ended_at]
    return Call(
        id=call_id,
        generation=generation,
        phase=phase,
        status=status,
        direction=primary.direction,
        local=primary.local,
        remote=primary.remote,
        remote_number=primary.remote_number,
        queue=primary.queue,
        trunk=primary.trunk,
        service_number=primary.service_number,
        destination=primary.destination,
        started_at=min(starts) if starts else _time(src.get("start")),
        ended_at=max(ends) if ends else _time(src.get("end")),
        # Sums over legs: a transferred call talked on every leg, and the CRM wants the total.
        duration=_total([leg.duration for leg in legs]),
        talk_time=_total([leg.talk_time for leg in legs]),
        wait_time=_total([leg.wait_time for leg in legs]),
        recordings=[r for leg in legs for r in leg.recordings],
        tags=list(dict.fromkeys(t for leg in legs for t in leg.tags)),
        end_cause=_str(src.get("endCause")),
        end_cause_text=_str(src.get("endCauseStr")),
        ended_by=_lower(src.get("endBy")),
        transcription=transcription,
        legs=legs,
    )


def _looks_external(number: str | None) -> bool:
    """Extensions are short; trunk numbers are international or long."""
    if not number:
        return False
    return number.startswith(("+", "00")) or sum(c.isdigit() for c in number) > 6


def _legacy_direction(leg: Leg) -> str:
    """Legacy bodies have no direction field: infer it from party types, trunk and number."""
    kinds = (leg.caller.kind if leg.caller else None, leg.callee.kind if leg.callee else None)
    if kinds[0] == "remote":
        return "inbound"
    if kinds[1] == "remote" or leg.trunk or _looks_external(leg.destination):
        return "outbound"
    return "internal" if "local" in kinds else "unknown"


def _legacy_call(call_id: str, phase: str, data: dict[str, Any]) -> Call:
    """Legacy ``data`` is one flat leg; only direction, outcome and service need fixing up."""
    leg = _leg(data, 0)
    direction = _legacy_direction(leg)
    remote_number = None
    if direction != "internal":
        remote_number = leg.remote.number if leg.remote else None
        if remote_number is None and direction == "outbound" and _looks_external(leg.destination):
            remote_number = leg.destination  # before the callee is known, all there is
    status = leg.status
    if phase == "end":  # status still says CONNECTING on an unanswered end
        if status in ("talking", "hold", "completed"):
            status = "completed"
        elif status not in _FINAL_FAILURES:
            status = "missed"
        status = _ended(status, _str(data.get("endCause")))
    leg = msgspec.structs.replace(
        leg,
        direction=direction,
        status=status,
        remote_number=remote_number,
        service_number=_str(data.get("service")),
    )
    return _assemble(call_id, "legacy", phase, status, data, [leg], leg, False)


# -- presence and sms -------------------------------------------------------------------------


def presence_view(kind: str, raw_data: Any) -> Presence:
    data = _obj(raw_data)
    participant = _obj(data.get("participant"))
    status = _lower(data.get("status"))
    if status is None and kind == "conference":  # conference presence has flags, not a status
        if data.get("isJoined") is True:
            status = "joined"
        elif data.get("isLeaved") is True:
            status = "left"
    return Presence(
        kind=kind,
        extension=_str(data.get("extension")) or _str(participant.get("pbxExtension")),
        email=_str(data.get("email")) or _str(participant.get("email")),
        status=status,
        message=_str(data.get("message")),
        until=_time(data.get("until")),
    )


def sms_view(raw_data: Any) -> Sms:
    data = _obj(raw_data)
    parts = data.get("parts")
    return Sms(
        id=_str(data.get("id")),
        from_number=_str(data.get("from")),
        to_number=_str(data.get("to")),
        status=_lower(data.get("status")),
        reason=_str(data.get("reason")),
        channel=_str(data.get("channel")),
        parts=parts if isinstance(parts, int) and not isinstance(parts, bool) else None,
    )
