"""What every source does after verifying a body: route it and store it, or record a rejection.

Sources (webhook, SQS) own transport concerns — how the signature arrives, how to acknowledge;
this module owns the rest, so both paths dedupe and route identically.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from relay import routing
from relay.config import Settings
from relay.store import Recorded, Store
from relay.wildix import Event

log = logging.getLogger("relay.ingest")


class Ingest:
    def __init__(
        self, settings: Settings, store: Store, on_stored: Callable[[], None] | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.on_stored = on_stored
        self.rejected: Counter[tuple[str, str]] = Counter()
        self.accepted: Counter[tuple[str, str]] = Counter()

    def connectors_for(self, event: Event) -> list[str]:
        integration = self.settings.integrations[event.integration_id]
        matched = routing.match(integration.routes, event)
        return list(dict.fromkeys(route.connector for route in matched))

    async def accept(
        self, event: Event, *, transport: str, meta: dict[str, Any] | None = None
    ) -> Recorded:
        """Route and store in one transaction; raises if the store cannot commit."""
        recorded = await self.store.record(
            event, self.connectors_for(event), transport=transport, meta=meta
        )
        outcome = "duplicate" if recorded.duplicate else "accepted"
        self.accepted[(event.integration_id, outcome)] += 1
        log.info(
            "event %s",
            outcome,
            extra={
                "event_id": recorded.event_id,
                "integration": event.integration_id,
                "type": event.type,
                "deliveries": recorded.deliveries,
            },
        )
        if recorded.deliveries and self.on_stored is not None:
            self.on_stored()
        return recorded

    async def reject(
        self,
        *,
        transport: str,
        reason: str,
        integration_id: str | None,
        status_code: int | None = None,
        remote: str | None = None,
        body: bytes | None = None,
        meta: dict[str, Any] | None = None,
    ) -> bool:
        """Count, log (never the secret or the signature) and keep the rejected body.

        False when the rejection could not be stored: a queue source then keeps the message.
        """
        self.rejected[(integration_id or "-", reason)] += 1
        log.warning(
            "rejected %s: %s",
            transport,
            reason,
            extra={"integration": integration_id, "status_code": status_code, "remote": remote},
        )
        try:
            await self.store.record_rejection(
                transport=transport,
                reason=reason,
                integration_id=integration_id,
                status_code=status_code,
                remote=remote,
                body=body,
                meta=meta,
            )
        except Exception as exc:  # the store being down must not turn a 401 into a 500
            log.error("could not record rejection: %s", exc)
            return False
        return True
