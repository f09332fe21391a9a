"""Wildix webhook bodies → one stable, normalized ``Event``.

Wildix ships two payload generations (legacy 2023 ``call:start|update|end`` with a flat ``data``;
current ``call:live:*`` / ``call:completed`` with ``data.flows[]``) and documents neither fully.
Only the envelope is strict (a bad one is a 400); everything below it is read defensively and
degrades to None, because a rejected webhook is lost after Wildix's few retries.

What the store keeps beside the raw body is bounded here, before any batch: an ``id``, ``type``
or ``integrationId`` longer than its column is a 400 naming the field and the limit on every
database (PostgreSQL would cut it, SQLite keep it whole); a call id in ``data`` that long is no
call id (relay.wildix.normalize), like any other junk below the envelope. A NUL (``\\u0000``) in
a string is accepted: the raw body is stored byte-exact on both databases, and the columns
derived from it hold a form every database accepts (relay.store.rows.column_text) — a caller-ID
name set by an outside caller must not cost a customer's call log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import cached_property
from typing import Annotated, Any, TypeVar

import msgspec

from relay.wildix.normalize import (
    EPOCH,
    MAX_ID,
    call_id_of,
    call_view,
    presence_view,
    sms_view,
)
from relay.wildix.views import Call, Presence, Sms

log = logging.getLogger(__name__)
T = TypeVar("T")


class InvalidEvent(ValueError):
    """Body is not JSON or not a Wildix envelope (→ HTTP 400)."""


# the longest values the store's columns hold (relay.store.tables; a test keeps them equal);
# MAX_ID (events.subject_id and call_id) is relay.wildix.normalize's
MAX_TYPE = 100  # events.type
MAX_INTEGRATION_ID = 64  # events.integration_id


class Event(msgspec.Struct, frozen=True, dict=True):
    """A received webhook: the envelope, the untouched body, and normalized views of it.

    The views are built on first use: ingest only needs them when a route filters on them, and
    normalizing a call costs more than verifying and decoding its body.
    """

    id: str  # the SUBJECT id (the call id for calls): shared by every event about it
    type: str
    integration_id: str
    time: datetime
    pbx: str | None
    company: str | None
    data: Any
    raw: bytes

    @cached_property
    def call(self) -> Call | None:
        return self._normalized(call_view, self.type, self.id) if self.type[:5] == "call:" else None

    @cached_property
    def presence(self) -> Presence | None:
        kind = _PRESENCE_KINDS.get(self.type)
        return self._normalized(presence_view, kind) if kind else None

    @cached_property
    def sms(self) -> Sms | None:
        return self._normalized(sms_view) if self.type == "sms:status" else None

    def _normalized(self, view: Callable[..., T], *args: Any) -> T | None:
        try:
            return view(*args, self.data)
        except Exception:  # a normalizer bug must not turn a valid delivery into a lost one
            log.exception("could not normalize %s event %s; keeping it raw", self.type, self.id)
            return None

    @cached_property
    def call_id(self) -> str | None:
        """The id shared by every event about one call (what orders its deliveries)."""
        return call_id_of(self.type, self.id, self.data) if self.type[:5] == "call:" else None

    def view(self) -> dict[str, Any]:
        """Plain builtins (a copy) for where-filters and templates, which must not see Structs."""
        fields = [f for f in self.__struct_fields__ if f != "raw"]
        values = {f: getattr(self, f) for f in [*fields, "call", "presence", "sms"]}
        view: dict[str, Any] = msgspec.to_builtins(values)
        return view


class _Envelope(msgspec.Struct, rename="camel"):
    id: Annotated[str, msgspec.Meta(max_length=MAX_ID)]
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TYPE)]
    time: int
    integration_id: Annotated[str, msgspec.Meta(max_length=MAX_INTEGRATION_ID)]
    data: Any
    pbx: str | None = None
    company: str | None = None


_DECODER = msgspec.json.Decoder(_Envelope)
_REQUIRED: tuple[tuple[str, type, str], ...] = (
    ("id", str, "a string"),
    ("type", str, "a string"),
    ("time", int, "an integer (epoch ms)"),
    ("integrationId", str, "a string"),
)
_LIMITS = (("id", MAX_ID), ("type", MAX_TYPE), ("integrationId", MAX_INTEGRATION_ID))
_PRESENCE_KINDS = {f"presence:{kind}": kind for kind in ("user", "telephony", "conference")}


def parse(raw: bytes) -> Event:
    """Decode and normalize one webhook body; raise InvalidEvent only for a broken envelope."""
    if not isinstance(raw, bytes):  # bytearray/memoryview from some servers: store real bytes
        raw = bytes(raw)
    try:
        env = _DECODER.decode(raw)
    except msgspec.DecodeError:  # includes ValidationError
        raise InvalidEvent(_diagnose(raw)) from None
    except RecursionError:  # arrays or objects nested deeper than the decoder follows
        raise InvalidEvent(TOO_DEEP) from None
    try:
        time = EPOCH + timedelta(milliseconds=env.time)
    except OverflowError:
        raise InvalidEvent("field 'time' is out of range") from None
    return Event(
        id=env.id,
        type=env.type,
        integration_id=env.integration_id,
        time=time,
        pbx=env.pbx,
        company=env.company,
        data=env.data,
        raw=raw,
    )


TOO_DEEP = "body is nested too deeply"


def _diagnose(raw: bytes) -> str:
    """A short message for the 400 body; only runs on the (rare) failure path."""
    try:
        obj = msgspec.json.decode(raw)
    except msgspec.ValidationError as exc:  # valid JSON, but e.g. a number beyond 64-bit float
        return f"body has an unsupported value: {exc}"
    except msgspec.DecodeError:
        return "body is not JSON"
    except RecursionError:  # untyped, the decoder follows what the typed one refused at once
        return TOO_DEEP
    if not isinstance(obj, dict):
        return "body is not a JSON object"
    for name, kind, label in _REQUIRED:
        if name not in obj:
            return f"missing field '{name}'"
        value = obj[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"field '{name}' must be {label}"
    if not obj["type"]:
        return "field 'type' must not be empty"
    for name, limit in _LIMITS:
        if len(obj[name]) > limit:
            return f"field '{name}' is longer than {limit} characters"
    if "data" not in obj:
        return "missing field 'data'"
    for name in ("pbx", "company"):
        if obj.get(name) is not None and not isinstance(obj[name], str):
            return f"field '{name}' must be a string"
    if not -(2**63) <= obj["time"] < 2**64:
        return "field 'time' is out of range"
    return "body is not a Wildix envelope"
