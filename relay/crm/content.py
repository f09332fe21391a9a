"""The activity a CRM connector writes: fields, title and notes, and the idempotency marker.

Title and notes are Jinja templates (``title``/``notes`` in the connector's config) rendered from
the merged call snapshot. The marker line is appended by relay, outside the template, so no
template can drop it: it is how a connector finds its own record after a crash.
"""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from relay.crm.facts import Facts
from relay.crm.phones import Person
from relay.templates import render

OUTCOME_LABELS = {
    "in_progress": "in progress",
    "completed": "answered",
    "missed": "not answered",
    "busy": "busy",
    "failed": "failed",
}


def marker(integration_id: str, call_id: str, leg: int | None = None) -> str:
    """A single alphanumeric token (``wx`` + 24 hex), findable by any CRM's token search."""
    key = f"{integration_id}|{call_id}|{'' if leg is None else leg}"
    return "wx" + hashlib.sha256(key.encode()).hexdigest()[:24]


def clock(seconds: float | None) -> str:
    """125.4 → "2:05"; 3725 → "1:02:05"."""
    if seconds is None:
        return ""
    total = round(seconds)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def text_to_html(text: str) -> str:
    """Plain notes → the HTML that HubSpot's body and Pipedrive's note fields display."""
    return "<br>\n".join(html.escape(line) for line in text.rstrip("\n").split("\n"))


@dataclass
class Activity:
    """Everything a connector needs to write one call: CRM-neutral, rendered from ``Facts``."""

    facts: Facts
    status: str  # in_progress | completed | missed | busy | failed
    title: str
    notes: str  # plain text, the marker line last
    marker: str
    person: Person | None = None
    owner: str | None = None
    recording_urls: list[str] = field(default_factory=list)

    @property
    def direction(self) -> str:
        return self.facts.direction or "unknown"

    @property
    def started_at(self) -> datetime | None:
        return self.facts.start_time

    @property
    def ended_at(self) -> datetime | None:
        return self.facts.ended_at

    @property
    def seconds(self) -> float | None:
        return self.facts.total_seconds

    @property
    def local_number(self) -> str | None:
        local = self.facts.local
        return (local.number or local.extension) if local else None

    @property
    def from_number(self) -> str | None:
        """Inbound: the caller; outbound/internal: our user's line."""
        if self.direction == "inbound":
            return self.facts.remote_number
        return self.local_number or self.facts.service_number

    @property
    def to_number(self) -> str | None:
        if self.direction == "inbound":
            return self.facts.service_number or self.local_number
        return self.facts.remote_number or self.facts.destination

    def fingerprint(self) -> str:
        """Changes when anything written to the CRM would change: duplicates write nothing."""
        parts = (
            self.status,
            self.title,
            self.notes,
            self.recording_urls,
            self.seconds,
            self.facts.start_time,
            self.facts.ended_at,
            self.person.id if self.person else None,
            self.owner,
        )
        return hashlib.sha256(msgspec.json.encode(parts)).hexdigest()[:32]


def template_values(facts: Facts, status: str, person: Person | None) -> dict[str, Any]:
    call = facts.view()
    local = facts.local
    remote = (person.name if person and person.name else None) or facts.remote_name
    number = facts.remote_number
    return {
        "call": call,
        "status": status,
        "outcome": status,
        "outcome_label": OUTCOME_LABELS.get(status, status),
        "person": msgspec.to_builtins(person) if person else None,
        "remote": f"{remote} ({number})" if remote and number else remote or number or "unknown",
        "local": (local.name or local.extension or local.number or "?") if local else "?",
        "started": facts.start_time.strftime("%Y-%m-%d %H:%M:%S UTC") if facts.start_time else "",
        "duration": clock(facts.total_seconds) if facts.ended else "",
        "talk_time": clock(facts.talk_time),
    }


def build_activity(
    facts: Facts,
    *,
    title: str,
    notes: str,
    recording_url: str | None,
    integration_id: str,
    person: Person | None,
    owner: str | None,
) -> Activity:
    status = facts.status
    values = template_values(facts, status, person)
    urls = [r for r in facts.recordings if r.startswith("https://")]
    if recording_url:
        urls += [
            render(recording_url, file_name=r, **values).strip()
            for r in facts.recordings
            if "://" not in r
        ]
    values["recordings"] = urls
    mark = marker(integration_id, facts.call_id, facts.leg)
    body = render(notes, **values).rstrip("\n")
    leg = f" leg {facts.leg}" if facts.leg is not None else ""
    body = f"{body}\nWildix call {facts.call_id}{leg} · ref {mark}" if body else mark
    return Activity(
        facts=facts,
        status=status,
        title=" ".join(render(title, **values).split())[:250],
        notes=body,
        marker=mark,
        person=person,
        owner=owner,
        recording_urls=urls,
    )


def split_name(full: str | None, fallback: str) -> tuple[str | None, str]:
    """(first, last) for CRMs that require a last name; the number stands in when nameless."""
    first, _, last = (full or "").rpartition(" ")
    return first or None, last or fallback
