"""What every source does after verifying a body: route it and store it, or record a rejection.

Sources (webhook, SQS) own transport concerns — how the signature arrives, how to acknowledge;
this module owns the rest, so both paths dedupe and route identically.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiolimiter import AsyncLimiter

from relay import metrics, routing
from relay.config import Settings
from relay.ingest.group_commit import Batcher
from relay.live_config import LiveConfig
from relay.store.records import SIGNED_EXCERPT, UNSIGNED_EXCERPT, Store, clip
from relay.store.rows import Incoming, Recorded, RowRefused
from relay.wildix import Event

log = logging.getLogger("relay.ingest")

# Incidents only a process itself sees (relay.admin.watcher reads the others from the store).
STORE_UNAVAILABLE = "store_unavailable"  # subject "ingest": events answered 503 / kept in SQS
SQS_CONSUMER = "sqs_consumer"  # subject: the integration whose queue cannot be read

# Rejections recorded (a row and a log line): a burst of 100, then 10 a second. A flood of
# unsigned requests costs a counter increment each beyond that, never a write or a line; a real
# misconfiguration (a wrong secret, a retired integration id) still shows every example needed.
RECORD_BURST = 100
RECORD_RATE = 10.0  # per second


def shown_id(integration_id: str | None, known: Mapping[str, Any]) -> str | None:
    """A configured id as it is; any other (the client chose it) cut to a short printable form
    with its length, so a 1 MB id costs 60 bytes in the table and the log."""
    if integration_id is None or integration_id in known:
        return integration_id
    if len(integration_id) <= 32:
        return clip(integration_id, 32)
    return f"{clip(integration_id, 32)} ({len(integration_id)} chars)"


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
        self, live: LiveConfig, store: Store, on_stored: Callable[[], None] | None = None
    ) -> None:
        self.live = live
        self.store = store
        self.on_stored = on_stored
        # Refusals are counted by the metrics (labels bounded); rows and lines are rate-limited.
        self._recording = AsyncLimiter(RECORD_BURST, RECORD_BURST / RECORD_RATE)
        self._unrecorded = 0  # skipped since the last rejection recorded
        self._flooding = False  # said so in the log; said again only once a flood has ended
        self.writer = group_commit(store, self._commit)
        self._committed_at = -math.inf
        self._latency = {t: metrics.INGEST_SECONDS.labels(t) for t in ("webhook", "sqs")}
        self._store_down = False  # a commit failed since the last one that succeeded
        self._reports: set[asyncio.Task[None]] = set()
        self._last_report: asyncio.Task[None] | None = None

    @property
    def settings(self) -> Settings:
        """The config in force; a request reads it once and keeps that one (a reload swaps it)."""
        return self.live.current

    def committed_within(self, seconds: float) -> bool:
        """An ingest commit succeeded this recently: the store takes writes (``/readyz``)."""
        return time.monotonic() - self._committed_at < seconds

    def connectors_for(self, event: Event, settings: Settings | None = None) -> list[str]:
        """``settings``: the config the request began with (default: the one in force)."""
        integration = (settings or self.settings).integrations.get(event.integration_id)
        return routing.targets(integration.routes, event) if integration else []

    async def accept(
        self,
        event: Event,
        *,
        transport: str,
        meta: dict[str, Any] | None = None,
        settings: Settings | None = None,
    ) -> Recorded:
        """Route and store in one transaction; raises if the store cannot commit."""
        t0 = time.perf_counter()
        recorded = await self.writer.submit(
            Incoming(event, self.connectors_for(event, settings), transport, meta)
        )
        latency = self._latency.get(transport) or metrics.INGEST_SECONDS.labels(transport)
        latency.observe(time.perf_counter() - t0)
        return recorded

    async def _commit(self, items: Sequence[Incoming]) -> list[Recorded]:
        """One transaction for a batch, then one log line and one count per kind for all of it:
        at thousands of events a second, a line per event would cost more than storing it."""
        try:
            recorded = await self.store.record_batch(items)
        except RowRefused:
            raise  # one event the store cannot hold, not the store being away
        except BaseException as exc:
            self._committed_at = -math.inf  # a failed commit disproves the last success
            if not self._store_down:
                self._store_down = True
                summary = f"the store refused ingest (answered 503, messages kept): {exc}"
                self.report(STORE_UNAVAILABLE, "ingest", summary)
            raise
        self._committed_at = time.monotonic()
        if self._store_down:  # back: the incident opened (now, if it could not then) resolves
            self._store_down = False
            self.report(STORE_UNAVAILABLE, "ingest", "the store refused ingest for a while")
            self.report(STORE_UNAVAILABLE, "ingest", None)
        tally: Counter[tuple[str, str, str]] = Counter()
        stored: list[int] = []
        for item, rec in zip(items, recorded, strict=True):
            outcome = "duplicate" if rec.duplicate else "accepted"
            tally[(item.event.integration_id, metrics.type_label(item.event.type), outcome)] += 1
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

    def report(self, kind: str, subject: str, summary: str | None) -> None:
        """An incident this process sees: ``summary`` opens it, None resolves it. In the
        background, in order, best effort: a store that is away cannot keep it (the report
        made when it is back opens it then)."""
        previous = next(reversed(list(self._reports)), None) if self._reports else None
        task = asyncio.create_task(
            self._report(previous, kind, subject, summary[:1000] if summary else None)
        )
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    async def _report(
        self, previous: asyncio.Task[None] | None, kind: str, subject: str, summary: str | None
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        to = self.settings.alerts.connectors
        try:
            done = await self.store.report_incident(kind, subject, summary, alert_to=to)
        except Exception as exc:
            log.error("could not record incident %s/%s: %s", kind, subject, exc)
            return
        if done is not None:
            log.warning(
                "incident %s",
                "resolved" if summary is None else "opened",
                extra={"kind": kind, "subject": subject},
            )
            if self.on_stored is not None:
                self.on_stored()  # its alert is a delivery

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
        signed: bool = False,
    ) -> bool:
        """Count, log (never the secret or the signature) and keep the rejected body.

        Everything here is what the sender chose, so it is bounded first: an id that is not
        configured is cut (``shown_id``), texts are cut to their columns, the body kept to
        4 KiB unless its signature verified (``signed``). Every refusal is counted; beyond
        ``RECORD_BURST`` then ``RECORD_RATE``/s only counted: the count of those skipped goes
        on the next line logged.

        False when the rejection could not be stored: a queue source then keeps the message.
        """
        self.count_refusal(integration_id, "rejected")
        if not self._recording.has_capacity():
            if not self._flooding:
                self._flooding = True
                log.warning(
                    "rejections arrive faster than %g/s: counting the rest, not recording them",
                    RECORD_RATE,
                )
            self._unrecorded += 1
            return True
        await self._recording.acquire()
        iid = shown_id(integration_id, self.settings.integrations)
        reason = clip(reason, 255) or ""
        extra: dict[str, Any] = {
            "integration": iid,
            "status_code": status_code,
            "remote": clip(remote, 255),
        }
        if self._unrecorded:
            extra["unrecorded"], self._unrecorded = self._unrecorded, 0
        else:
            self._flooding = False
        log.warning("rejected %s: %s", transport, reason, extra=extra)
        try:
            await self.store.record_rejection(
                transport=transport,
                reason=reason,
                integration_id=iid,
                status_code=status_code,
                remote=remote,
                body=body,
                meta=meta,
                excerpt_limit=SIGNED_EXCERPT if signed else UNSIGNED_EXCERPT,
            )
        except Exception as exc:  # the store being down must not turn a 401 into a 500
            log.error("could not record rejection: %s", exc)
            return False
        return True
