"""What connectors that talk to people (Slack, email, chat tools) share.

Which message an event calls for, the values its template sees, a key that names "this call's
message for this phase" for idempotence, templates given inline or by file, and a check of an
admin's template against the bundled Wildix samples so a broken one fails ``check-config``.

Event values are written by strangers (a caller chooses their caller-ID name), so what turns them
into something a reader clicks or gets pinged by lives here too, for every chat connector: the
link check (``safe_url``), Slack-style escaping (``chat_text``, ``chat_plain``, ``chat_link``) and
Adaptive Card (Teams) escaping (``teams_text``, ``teams_link``), in ``untrusted_text.py``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from relay.errors import PermanentError
from relay.messages.untrusted_text import (
    chat_link,
    chat_plain,
    chat_text,
    checked_links,
    safe_url,
    teams_link,
    teams_text,
)
from relay.store.incidents import INCIDENT_EVENT, Incident, alert_body
from relay.templates import TemplateError, add_filter, compile_template, render
from relay.wildix import Event, parse, samples

if TYPE_CHECKING:
    from relay.connector import ConnectorContext, DeliveryContext

__all__ = [
    "MESSAGE_KINDS",
    "TemplateFile",
    "chat_link",
    "chat_plain",
    "chat_text",
    "check_template",
    "message_kind",
    "once_key",
    "party_label",
    "post_once",
    "render_checked",
    "safe_url",
    "sample_events",
    "teams_link",
    "teams_text",
    "template_source",
    "template_values",
]

MESSAGE_KINDS = ("missed_call", "call_summary", "presence", "sms_status", "incident")
_UNANSWERED = frozenset({"missed", "busy"})


def message_kind(view: dict[str, Any]) -> str | None:
    """``missed_call`` (inbound, not answered), ``call_summary`` (any other call), ``presence``,
    ``sms_status``, ``incident`` (relay's own alerts, ``alerts:``), or None for event types no
    message is written for."""
    if view.get("type") == INCIDENT_EVENT:
        return "incident"
    call = view.get("call")
    if call:
        unanswered = call.get("direction") == "inbound" and call.get("status") in _UNANSWERED
        return "missed_call" if unanswered else "call_summary"
    if view.get("presence"):
        return "presence"
    if view.get("sms"):
        return "sms_status"
    return None


def _numbered(number: Any) -> dict[str, Any] | None:
    return {"number": number} if number else None


def call_parties(call: dict[str, Any] | None) -> tuple[Any, Any]:
    """(caller, callee) of a call view, whichever side is local; before Wildix names the other
    party its number, or the number dialled, is all there is."""
    if not call:
        return None, None
    local = call.get("local")
    outside = call.get("remote") or _numbered(call.get("remote_number"))
    if call.get("direction") == "inbound":
        return outside, local
    if call.get("direction") == "outbound":
        return local, outside or _numbered(call.get("destination"))
    legs = call.get("legs") or [{}]
    caller = legs[0].get("caller") or local
    return caller, legs[0].get("callee") or _numbered(call.get("destination"))


def party_label(party: Any) -> str:
    """``Giulia Rossi (ext. 214)``, ``Jane Doe (+33142685300)``, ``+33142685300`` or empty."""
    if not isinstance(party, dict):
        return ""
    number = party.get("number")
    name = party.get("name") if party.get("name") != number else None
    extension = party.get("extension")
    detail = f"ext. {extension}" if extension else number
    if name and detail:
        return f"{name} ({detail})"
    return name or detail or ""


add_filter("party", party_label)


def template_values(
    event: Event,
    ctx: ConnectorContext | None = None,
    *,
    call: dict[str, Any] | None = None,
    allow_http_links: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """``event.view()`` plus ``kind``, ``caller``/``callee``, ``integration`` and ``connector``.

    ``call`` replaces the event's call view, e.g. with what earlier events of the call told.
    Recording URLs that ``safe_url`` refuses are emptied here, so no template (an admin's
    included) can turn them into a link.
    """
    values = event.view()
    if call is not None:
        values["call"] = call
    if values.get("call"):
        values["call"] = checked_links(values["call"], allow_http_links)
    caller, callee = call_parties(values.get("call"))
    values.update(
        kind=message_kind(values),
        caller=caller,
        callee=callee,
        integration={
            "id": event.integration_id,
            "name": getattr(ctx, "integration_name", None),
        },
        connector=ctx.name if ctx is not None else None,
        allow_http_links=allow_http_links,
    )
    values.update(extra)
    return values


def once_key(event: Event) -> str:
    """Names the message an event calls for: one per call and phase, else one per event body."""
    if event.call is not None:
        return f"{event.integration_id}:{event.call.id}:{event.call.phase}"
    return f"{event.integration_id}:{event.type}:{hashlib.sha256(event.raw).hexdigest()[:32]}"


def render_checked(
    ctx: ConnectorContext,
    source: str,
    values: dict[str, Any],
    check: Callable[[str], Any],
    what: str,
) -> Any:
    """A template rendered at delivery and passed to ``check``; any failure is a PermanentError
    naming ``what`` (the delivery is dead with the reason: a retry would render the same)."""
    try:
        return check(ctx.render(source, **values))
    except ValueError as exc:  # TemplateError, or what check() found wrong
        raise PermanentError(f"{what}: {exc}") from None
    except Exception as exc:  # a runtime error in an admin's template
        raise PermanentError(f"{what}: {type(exc).__name__}: {exc}") from None


async def post_once(
    event: Event,
    ctx: DeliveryContext,
    post_on: Sequence[str],
    compose: Callable[[], Any],
    send: Callable[[Any], Awaitable[None]],
) -> None:
    """For a target that cannot edit what it posted: one message per call phase whose event type
    matches ``post_on`` (one per event for presence and SMS), ever. ``compose()`` gives the
    message or None; a retry, replay or redelivered copy finds the durable link: no post."""
    if event.call is not None and not any(fnmatchcase(event.type, p) for p in post_on):
        ctx.log.debug("%s is not in post_on: nothing to post", event.type)
        return
    key = f"posted:{once_key(event)}"
    if await ctx.links.get(key) is not None:
        ctx.log.info("already posted for %s", key)
        return
    message = compose()
    if message is None:
        ctx.log.debug("no message for %s events", event.type)
        return
    await send(message)
    await ctx.links.set(key, {"at": datetime.now(UTC).isoformat()})


class TemplateFile(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A template kept in its own file: ``{file: /etc/relay/missed.j2}`` in config.yaml."""

    file: str


def template_source(
    value: str | TemplateFile,
    key: str,
    kind: str | None = None,
    *,
    html: bool = False,
    check: Callable[[str], object] | None = None,
) -> str:
    """An admin's template, read (inline or from its file) and, given its ``kind``, checked
    against the samples (see ``check_template``); ValueError naming ``key`` if it is unusable."""
    if kind is not None and kind not in MESSAGE_KINDS:
        raise ValueError(f"`{key}`: unknown message kind (known: {', '.join(MESSAGE_KINDS)})")
    if isinstance(value, str):
        source = value
    else:
        path = Path(value.file).expanduser()
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise ValueError(f"`{key}`: cannot read template file {path}: {reason}") from None
    if kind is not None:
        try:
            check_template(source, [kind], html=html, check=check)
        except TemplateError as exc:
            raise ValueError(f"`{key}`: {exc}") from None
    return source


@lru_cache(maxsize=1)
def sample_events() -> dict[str, Event]:
    """The Wildix samples relay ships (those of ``relay send-test``), parsed, by name, and an
    incident alert (``relay_incident``): what an admin's templates are checked against."""
    folder = samples()
    found = {
        entry.name.removesuffix(".json"): parse(entry.read_bytes())
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".json")
    }
    at = datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
    sample = Incident(1, "circuit_open", "crm", "circuit open: HTTP 503", at, at, None)
    found["relay_incident"] = parse(alert_body(sample, "opened"))
    return found


def check_template(
    source: str,
    kinds: Collection[str] | None = None,
    *,
    html: bool = False,
    check: Callable[[str], object] | None = None,
) -> None:
    """Compile, then render against every sample of ``kinds`` and pass the output to ``check``.

    Raises TemplateError naming the sample, so ``__post_init__`` can report it at config time.
    """
    compile_template(source, html)
    for name, event in _samples(kinds):
        try:
            output = render(source, html=html, **template_values(event))
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
            raise TemplateError(f"fails on the sample {name}: {problem}") from None
        if check is not None:
            try:
                check(output)
            except ValueError as exc:
                raise TemplateError(f"on the sample {name}: {exc}") from None


def _samples(kinds: Collection[str] | None) -> Iterable[tuple[str, Event]]:
    for name, event in sample_events().items():
        if kinds is None or message_kind(event.view()) in kinds:
            yield name, event
