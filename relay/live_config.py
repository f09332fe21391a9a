"""The configuration in force, swapped whole when ``config.yaml`` is reloaded.

A :class:`Settings` is never changed in place: a reload builds a new one and swaps it in, so a
reader that took ``live.current`` at the start of a request or a claim keeps one consistent
config to its end, whatever happens to the file meanwhile.

Some keys cannot take effect in a running process (the database it holds connections to, the
address it listens on, the token its routes were built with…): a reload that changes one is
refused whole, naming the key, and the process keeps the config it had (docs/operations.md).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from relay.config import ConfigError, Settings
from relay.secrets import Redactor

# Top-level sections read once at start-up: the store's engine, uvicorn's socket and limits,
# the admin routes and cookies, the dispatcher's timings, the plugin modules, the log handler,
# and which process polls SQS.
RESTART_SECTIONS = ("database", "server", "admin", "dispatch", "plugins", "logging", "sqs")


class ReloadResult(msgspec.Struct, kw_only=True):
    """What a reload did: ``loaded``, ``unchanged`` (same text), or ``refused`` with the key."""

    result: Literal["loaded", "unchanged", "refused"]
    version: str  # the version in force afterwards
    loaded_at: datetime
    path: str
    error: str | None = None
    key: str | None = None  # the key path the refusal is about, e.g. $.connectors.crm.url
    added: list[str] = []  # connectors started
    removed: list[str] = []  # connectors drained and stopped
    changed: list[str] = []  # connectors replaced by an instance with the new options


class LiveConfig:
    """The current settings, their version and when they were loaded, and the one redactor
    every output of this process goes through (it learns each reloaded config's secrets)."""

    def __init__(self, settings: Settings, version: str = "") -> None:
        self.current = settings
        self.version = version or "unversioned"
        self.loaded_at = datetime.now(UTC)
        self.redactor = Redactor(settings.secret_values())

    @property
    def path(self) -> str:
        return self.current.source

    def swap(self, settings: Settings, version: str) -> None:
        self.redactor.learn(settings.secret_values())  # before anything can log them
        self.current = settings
        self.version = version
        self.loaded_at = datetime.now(UTC)

    def result(self, result: Literal["loaded", "unchanged", "refused"], **kw: Any) -> ReloadResult:
        return ReloadResult(
            result=result, version=self.version, loaded_at=self.loaded_at, path=self.path, **kw
        )


def needs_restart(old: Settings, new: Settings) -> ConfigError | None:
    """The first change a running process cannot apply, located by its key path."""
    for section in RESTART_SECTIONS:
        before, after = getattr(old, section), getattr(new, section)
        if before != after:
            for field in msgspec.structs.fields(before):
                if getattr(before, field.name) != getattr(after, field.name):
                    return _restart(f"$.{section}.{field.encode_name}")
            return _restart(f"$.{section}")
    # An SQS integration's consumer holds its queue and credentials from start-up.
    for iid in old.integrations.keys() | new.integrations.keys():
        a, b = old.integrations.get(iid), new.integrations.get(iid)
        queue_a = a.sqs if a and a.transport == "sqs" else None
        queue_b = b.sqs if b and b.transport == "sqs" else None
        if queue_a != queue_b:
            return _restart(f"$.integrations.{iid}.sqs")
    return None


def _restart(path: str) -> ConfigError:
    return ConfigError(path, "changed, and only a restart applies it (the old config stays)")
