"""How the dashboard writes values: one time format and zone, call durations as a clock, phone
numbers with their ``+``, a participant on one line. Jinja filters (see ``template_config``)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"
MIN_INTERNATIONAL = 7  # digits: shorter strings are extensions or short codes, not E.164


def when(value: datetime | str | None) -> str:
    """Every time on the dashboard, in UTC; the normalized view's times arrive as ISO text."""
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime(TIME_FORMAT)


def clock(seconds: float | None) -> str:
    """``28`` → ``0:28``, ``181`` → ``3:01``, ``3725`` → ``1:02:05``: a call's length."""
    if seconds is None:
        return "—"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def phone(value: str | None) -> str:
    """International numbers with their ``+`` (relay indexes digits only); extensions and
    national forms (a leading 0) as they are."""
    if not value:
        return "—"
    text = str(value).strip()
    if text.isdigit() and len(text) >= MIN_INTERNATIONAL and not text.startswith("0"):
        return "+" + text
    return text


def party(value: Mapping[str, Any] | None) -> str:
    """``Giulia Rossi · ext. 214 · giulia.rossi@example.com``: what is known of a participant."""
    if not value:
        return "—"
    parts = [value.get("name")]
    extension = value.get("extension")
    if extension:
        parts.append(f"ext. {extension}")
    elif value.get("number"):
        parts.append(phone(value["number"]))
    parts.append(value.get("email"))
    shown = [str(p) for p in parts if p]
    return " · ".join(shown) or "—"


FILTERS = {"when": when, "clock": clock, "phone": phone, "party": party}
