"""Helpers for the operations tests: a relay with the admin token set, and waiting on states."""

from __future__ import annotations

from typing import Any

from relay.config import Settings
from tests.fakes.receiver import Receiver
from tests.support.relay import RunningRelay, make_settings

TOKEN = "adm-7Qw9eR2tY5uI8oP1aS4dF6gH"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def admin_settings(
    db_url: str,
    connectors: dict[str, Any],
    *args: Any,
    admin: dict[str, Any] | None = None,
    **kw: Any,
) -> Settings:
    extra = {"admin": {"token": TOKEN, **(admin or {})}, **kw.pop("extra", {})}
    return make_settings(db_url, connectors, *args, extra=extra, **kw)


def webhook(receiver: Receiver, **extra: Any) -> dict[str, Any]:
    return {"type": "webhook", "url": receiver.url, **extra}


async def api(relay: RunningRelay, method: str, path: str, **kw: Any) -> Any:
    """Call the admin API with the token; fail loudly on anything but 2xx."""
    response = await relay.client.request(method, relay.url + "/api/v1" + path, headers=AUTH, **kw)
    assert response.is_success, f"{method} {path} → {response.status_code} {response.text}"
    return response.json()


async def wait_state(relay: RunningRelay, delivery_id: int, *states: str) -> Any:
    """The delivery row once it is in one of ``states``."""

    async def check() -> Any:
        rows = [r for r in await relay.deliveries() if r.id == delivery_id]
        return rows[0] if rows and rows[0].state in states else None

    return await relay.wait_until(check, what=f"delivery {delivery_id} to be {states}")


async def open_incidents(relay: RunningRelay, kind: str) -> list[Any] | None:
    """The open incidents of one kind, once there is one."""
    found = [i for i in await relay.store.incidents(open_only=True) if i.kind == kind]
    return found or None


async def resolved(relay: RunningRelay, incident_id: int) -> bool:
    return any(i.id == incident_id and not i.open for i in await relay.store.incidents())
