"""What every source does after verifying a body: route it and store it, or record a rejection.

Sources (webhook, SQS) own transport concerns — how the signature arrives, how to acknowledge;
this module owns the rest, so both paths dedupe and route identically.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from relay import metrics, routing
from relay.config import Settings
from relay.ingest.group_commit import Batcher
from relay.store.records import Store
from relay.store.rows import Incoming, Recorded
from relay.wildix import Event

log = logging.getLogger("relay.ingest")


def group_commit(
    store: Store, commit: Callable[[Sequence[Incoming]], Awaitable[list[Recorded]]] | None = None
) -> Batcher[Incoming, Recorded]:
    """Concurrent arrivals share transactions (see relay.ingest.group_commit), in batches shaped
    by the store's backend (``IngestShape``: e.g. one at a time on SQLite's single writer)."""
    shape = store.backend.ingest
    return Batcher(
        commit or store.record_batch, concurrency=shape.concurrency, max_batch=shape.max_batch
    )


class Ingest:
    def __init__(
        self, settings: Settings, store: Store, on_stored: Callable[[], None] | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.on_stored = on_stored
        self.rejected: Counter[tuple[str, str]] = Counter()
        self.writer = group_commit(store, self._commit)
        self._latency = {t: metrics.INGEST_SECONDS.labels(t) for t in ("webhook", "sqs")}

    def connectors_for(self, event: Event) -> list[str]:
        return routing.targets(self.settings.integrations[event.integration_id].routes, event)

    async def accept(
        self, event: Event, *, transport: str, meta: dict[str, Any] | None = None
    ) -> Recorded:
        """Route and store in one transaction; raises if the store cannot commit."""
        t0 = time.perf_counter()
        recorded = await self.writer.submit(
            Incoming(event, self.connectors_for(event), transport, meta)
        )
        latency = self._latency.get(transport) or metrics.INGEST_SECONDS.labels(transport)
        latency.observe(time.perf_counter() - t0)
        return recorded

    async def _commit(self, items: Sequence[Incoming]) -> list[Recorded]:
        """One transaction for a batch, then one log line and one count per kind for all of it:
        at thousands of events a second, a line per event would cost more than storing it."""
        recorded = await self.store.record_batch(items)
        tally: Counter[tuple[str, str, str]] = Counter()
        stored: list[int] = []
        for item, rec in zip(items, recorded, strict=True):
            outcome = "duplicate" if rec.duplicate else "accepted"
            tally[(item.event.integration_id, item.event.type, outcome)] += 1
            if not rec.duplicate:
                stored.append(rec.event_id)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "event %s",
                    outcome,
                    extra={
                        "event_id": rec.event_id,
                        "integration": item.event.integration_id,
                        "type": item.event.type,
                        "deliveries": rec.deliveries,
                    },
                )
        for labels, n in tally.items():
            metrics.EVENTS.labels(*labels).inc(n)
        deliveries = sum(rec.deliveries for rec in recorded)
        log.info(
            "events stored",
            extra={
                "event_ids": stored,
                "duplicates": len(items) - len(stored),
                "deliveries": deliveries,
            },
        )
        if deliveries and self.on_stored is not None:
            self.on_stored()
        return recorded

    def count_refusal(self, integration_id: str | None, outcome: str) -> None:
        """Rejected (our answer is final) or unavailable (the sender should retry)."""
        label = metrics.integration_label(integration_id, self.settings.integrations)
        metrics.EVENTS.labels(label, "", outcome).inc()

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
        self.count_refusal(integration_id, "rejected")
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
