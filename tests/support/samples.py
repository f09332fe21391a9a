"""The Wildix samples shipped in the package (relay/wildix/samples), by name."""

from __future__ import annotations

from pathlib import Path

from relay.wildix import samples

# every sample of the current generation, and of the legacy one
CURRENT = [
    "call_live_progress_start",
    "call_live_progress_update",
    "call_live_completed",
    "call_completed",
    "call_completed_missed_inbound",
    "presence_user",
    "presence_telephony",
    "sms_status",
]
LEGACY = ["legacy_call_start", "legacy_call_update", "legacy_call_end"]


def fixtures_dir() -> Path:
    """The samples' folder: the same files the installed package ships and `send-test` posts."""
    return Path(str(samples()))


def fixture(name: str) -> bytes:
    """A sample's exact bytes, by name without the ``.json``."""
    return (fixtures_dir() / f"{name}.json").read_bytes()


def fixture_bytes(name: str) -> bytes:
    """A sample's exact bytes, by file name."""
    return (fixtures_dir() / name).read_bytes()
