"""Connectors that need no account: ``log`` (a JSON line per event in the log) and ``file``.

They make the shipped config runnable with no environment, and they are what an admin points a
route at to see what Wildix actually sends before wiring a CRM.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from relay import (
    Connector,
    ConnectorConfig,
    ConnectorContext,
    DeliveryContext,
    Event,
    PermanentError,
    hookimpl,
)

_CALL_FIELDS = (
    "id",
    "phase",
    "direction",
    "status",
    "remote_number",
    "started_at",
    "ended_at",
    "duration",
    "talk_time",
    "queue",
    "end_cause",
)


def summary(event: Event) -> dict[str, Any]:
    """The few normalized fields a human scans for; the full view is a click away in the store."""
    view = event.view()
    call = view.get("call")
    if call:
        out = {k: call.get(k) for k in _CALL_FIELDS if call.get(k) not in (None, [], "")}
        local = call.get("local") or {}
        if local:
            out["local"] = {
                k: local[k] for k in ("extension", "name", "email") if local.get(k) is not None
            }
        return out
    for kind in ("presence", "sms"):
        if view.get(kind):
            return {k: v for k, v in view[kind].items() if v is not None}
    return {}


def _raw_json(event: Event) -> Any:
    """The original body as JSON (already validated at ingest); text if it ever is not."""
    try:
        return json.loads(event.raw)
    except ValueError:
        return event.raw.decode("utf-8", "replace")


class LogConfig(ConnectorConfig):
    include_raw: bool = False


class LogConnector(Connector):
    """One line per delivered event on the ``relay.connector.<name>`` logger (INFO), the event
    as the ``event`` field: an object in JSON logs, where a shipper can index it, and JSON text
    after the message in text logs."""

    type = "log"
    Config = LogConfig
    config: LogConfig

    async def deliver(self, event: Event, ctx: DeliveryContext) -> None:
        record: dict[str, Any] = {
            "type": event.type,
            "integration_id": event.integration_id,
            "call_id": event.call_id,
            "summary": summary(event),
        }
        if self.config.include_raw:
            record["raw"] = _raw_json(event)
        ctx.log.info("event %s", event.type, extra={"event": record})


class FileConfig(ConnectorConfig):
    path: str
    include_raw: bool = False

    def __post_init__(self) -> None:
        if not self.path.strip():
            raise ValueError("`path` must name a file")


# One lock per target file, shared by every connector instance of this process that writes it.
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock_for(path: Path) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(str(path), threading.Lock())


def _append(path: Path, line: bytes) -> None:
    """One O_APPEND write per line, so concurrent writers never interleave within a line."""
    with _lock_for(path):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)


class FileConnector(Connector):
    """Appends one JSON object per delivered event to ``path`` (JSON Lines).

    A debug sink, not a ledger: it keeps no ``links``, so an attempt retried after the line was
    written (a crash before the outcome was recorded, a replay) appends a duplicate line. Readers
    that care dedupe on ``delivery_id``.
    """

    type = "file"
    Config = FileConfig
    config: FileConfig

    @property
    def path(self) -> Path:
        return Path(self.config.path).expanduser()

    async def check(self, ctx: ConnectorContext) -> None:
        folder = self.path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not os.access(folder, os.W_OK):
            raise PermanentError(f"cannot write to {folder}")

    async def deliver(self, event: Event, ctx: DeliveryContext) -> None:
        record: dict[str, Any] = {
            "event_id": ctx.event_id,
            "delivery_id": ctx.delivery_id,
            "received": datetime.now(UTC).isoformat(),
            "type": event.type,
            "integration_id": event.integration_id,
            "call_id": event.call_id,
            "view": event.view(),
        }
        if self.config.include_raw:
            record["raw"] = _raw_json(event)
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        await asyncio.to_thread(_append, self.path, line.encode("utf-8"))


@hookimpl
def register_connectors(register: Any) -> None:
    register(LogConnector)
    register(FileConnector)
