"""Dashboard tests' helpers: a logged-in client session, and a store seeded with history.

History is written as rows (events received hours ago, their deliveries and attempts), since
the running relay can only make the present; the charts then read them as they read any.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from relay.store.records import Store
from relay.store.tables import attempts, deliveries, events
from tests.support.operations import TOKEN
from tests.support.relay import RunningRelay


async def ui_login(relay: RunningRelay) -> dict[str, str]:
    """Log the relay's client in through the form; the headers an htmx request carries."""
    page = await relay.client.get(relay.url + "/ui/login")
    csrf = re.search(r'name="_csrf_token" value="([^"]+)"', page.text)
    assert csrf is not None
    done = await relay.client.post(
        relay.url + "/ui/login", data={"token": TOKEN, "_csrf_token": csrf[1]}
    )
    assert done.status_code == 302, done.text
    return {"x-csrftoken": relay.client.cookies["relay_csrf"], "hx-request": "true"}


@dataclass(frozen=True)
class Past:
    """One seeded event, ``ago`` before now, and its delivery's attempts (outcome, ms)."""

    ago: timedelta
    integration: str = "q7m2xk"
    connector: str | None = None
    tries: Sequence[tuple[str, int]] = ()


async def seed(store: Store, now: datetime, history: Sequence[Past]) -> None:
    async with store.engine.begin() as conn:
        for n, past in enumerate(history):
            at = now - past.ago
            event_id = (
                await conn.execute(
                    events.insert().values(
                        integration_id=past.integration,
                        type="call:completed",
                        subject_id=f"seed-{n}",
                        call_id=f"seed-{n}",
                        body_sha256=f"{n:064x}",
                        raw=b"{}",
                        occurred_at=at,
                        received_at=at,
                        transport="webhook",
                        transport_meta={},
                    )
                )
            ).inserted_primary_key[0]
            if past.connector is None:
                continue
            last = past.tries[-1][0] if past.tries else "pending"
            delivery_id = (
                await conn.execute(
                    deliveries.insert().values(
                        event_id=event_id,
                        integration_id=past.integration,
                        connector=past.connector,
                        ordering_key=f"{past.connector}|seed-{n}",
                        state="pending" if last == "retry" else last,
                        attempts=len(past.tries),
                        next_attempt_at=now + timedelta(days=1),
                        created_at=at,
                        updated_at=at,
                    )
                )
            ).inserted_primary_key[0]
            for number, (outcome, ms) in enumerate(past.tries, 1):
                await conn.execute(
                    attempts.insert().values(
                        delivery_id=delivery_id,
                        number=number,
                        started_at=at + timedelta(seconds=number),
                        duration_ms=ms,
                        outcome=outcome,
                        status_code=200 if outcome == "succeeded" else 503,
                        worker="seed",
                    )
                )
