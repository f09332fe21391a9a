"""Wildix call scenarios for the CRM tests and bench, built from the shared fixtures.

Each builder returns the events of one call, in the order Wildix sends them, as exact bodies
(msgspec re-encodes the fixture with a new call id, numbers and times); tests sign and post them
like Wildix does. Only values change, never the shapes.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import msgspec

from tests.support.samples import fixture

Events = list[tuple[str, bytes]]  # (label, body)
AGENT = {
    "type": "LOCAL",
    "phone": "214",
    "name": "Giulia Rossi",
    "email": "giulia.rossi@example.org",
    "userId": "4410921",
    "userExtension": "214",
    "userDepartment": "Support",
    "groupId": "880121",
    "groupName": "Tier 1",
    "role": "AGENT",
    "license": "premium",
}


def _load(name: str) -> dict[str, Any]:
    return msgspec.json.decode(fixture(name))


def _remote(number: str) -> dict[str, str]:
    return {"type": "REMOTE", "phone": number, "name": number, "role": "CLIENT"}


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _shift(body: dict[str, Any], call_id: str, integration: str, offset: int) -> dict[str, Any]:
    """New call id and integration; every epoch-ms time moved by ``offset`` ms."""
    body["id"] = call_id
    body["integrationId"] = integration
    body["time"] += offset
    data = body["data"]
    if "id" in data or "flows" in data:
        data["id"] = call_id
    if isinstance(data.get("time"), int):
        data["time"] += offset
    for flow in data.get("flows") if isinstance(data.get("flows"), list) else []:
        for key in ("startTime", "endTime"):
            if flow.get(key):
                flow[key] += offset
        for rec in flow.get("recordingsData") or []:
            rec["start"] = rec["start"] + offset if rec.get("start") else 0
    if isinstance(data.get("start"), str):
        when = datetime.fromisoformat(data["start"].replace("Z", "+00:00"))
        data["start"] = _iso(round(when.timestamp() * 1000) + offset)
    return body


def _encode(items: list[tuple[str, dict[str, Any]]]) -> Events:
    return [(label, msgspec.json.encode(body)) for label, body in items]


def current_outbound(
    call_id: str,
    remote: str,
    *,
    integration: str = "q7m2xk",
    offset: int = 0,
    answered: bool = True,
    recording_url: str | None = None,
) -> Events:
    """Live start, live update (answered), live end, final record: the fixtures' call."""
    start, update = _load("call_live_progress_start"), _load("call_live_progress_update")
    end, record = _load("call_live_completed"), _load("call_completed")
    for body in (start, update, record):
        flow = body["data"]["flows"][0]
        flow["destination"] = flow["remotePhone"] = remote
        if "callee" in flow:
            flow["callee"] = _remote(remote)
    rec_flow, upd_flow = record["data"]["flows"][0], update["data"]["flows"][0]
    if recording_url:
        name = upd_flow["recordings"][0]
        upd_flow["recordingsData"][0]["url"] = recording_url
        rec_flow["recordings"] = [name]
        rec_flow["recordingsData"] = [
            {
                "fileName": name,
                "url": recording_url,
                "start": upd_flow["recordingsData"][0]["start"],
                "end": rec_flow["endTime"],
                "owner": "SYSTEM",
            }
        ]
    else:
        upd_flow.pop("recordings", None)
        upd_flow.pop("recordingsData", None)
    if not answered:
        upd_flow["status"] = "CONNECTING"
        rec_flow.update(
            callStatus="MISSED", talkTime=0, connectTime=0, waitTime=rec_flow["duration"]
        )
        record["data"]["endCause"] = "19"
    items = [("start", start), ("update", update), ("end", end), ("record", record)]
    return _encode([(lbl, _shift(b, call_id, integration, offset)) for lbl, b in items])


def current_inbound_missed(
    call_id: str, remote: str, *, integration: str = "q7m2xk", offset: int = 0
) -> Events:
    """Live start (ringing), live end, final record MISSED."""
    record = _load("call_completed_missed_inbound")
    rflow = record["data"]["flows"][0]
    rflow["caller"], rflow["remotePhone"] = _remote(remote), remote
    start = _load("call_live_progress_start")
    start["time"] = rflow["startTime"] + 50
    start["data"]["time"] = rflow["startTime"] + 10
    start["data"]["start"] = _iso(rflow["startTime"])
    start["data"]["flows"] = [
        {
            "flowIndex": 0,
            "duration": 0,
            "connectTime": 0,
            "talkTime": 0,
            "waitTime": 0,
            "caller": _remote(remote),
            "callee": copy.deepcopy(AGENT),
            "destination": "214",
            "serviceNumber": rflow["serviceNumber"],
            "direction": "INBOUND",
            "remotePhone": remote,
            "trunkName": "SIPTRUNK",
            "trunkDirection": "incoming",
            "status": "CONNECTING",
        }
    ]
    end = _load("call_live_completed")
    end["time"] = rflow["endTime"] + 40
    end["data"]["time"] = rflow["endTime"] + 20
    items = [("start", start), ("end", end), ("record", record)]
    return _encode([(lbl, _shift(b, call_id, integration, offset)) for lbl, b in items])


def legacy(
    call_id: str,
    remote: str | None,
    *,
    direction: str = "outbound",
    answered: bool = True,
    integration: str = "h3p9ta",
    offset: int = 0,
) -> Events:
    """Legacy start/update/end; ``remote=None`` keeps the fixtures' internal call."""
    start, update, end = (_load(f"legacy_call_{p}") for p in ("start", "update", "end"))
    if remote is not None:
        for body in (start, update, end):
            data = body["data"]
            data["trunkName"] = "SIPTRUNK"
            if direction == "outbound":
                data["destination"] = remote
                data["callee"] = None if body is start else _remote(remote)
            else:
                agent = dict(AGENT, company=None, userAgent=None, userDevice=None)
                data["caller"], data["callee"], data["destination"] = _remote(remote), agent, "214"
        talking = "TALKING" if answered else "CONNECTING"
        update["data"]["status"] = talking
        end["data"].update(
            status=talking,
            endCause="16" if answered else "19",
            endCauseStr="Normal Clearing" if answered else "No Answer",
            endBy="CALLER",
        )
        end["time"] = start["time"] + 125_000
    items = [("start", start), ("update", update), ("end", end)]
    return _encode([(lbl, _shift(b, call_id, integration, offset)) for lbl, b in items])
