"""SQS source: one consumer task per ``transport: sqs`` integration, polling its queue.

At-least-once, like the webhook: a message is deleted only after its event is committed (or its
rejection recorded), so a crash between commit and delete causes a redelivery that the store's
dedupe absorbs. When the store fails, nothing is deleted: the consumer stops receiving, backs off,
and the visibility timeout hands the messages back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from relay import metrics
from relay.config import Settings, SqsConfig
from relay.ingest.accept import SQS_CONSUMER, Ingest
from relay.ingest.sqs_client import create_client, describe
from relay.store.rows import RowRefused
from relay.wildix import Event, InvalidEvent, parse
from relay.wildix.signature import SQS_ATTRIBUTE, verify

log = logging.getLogger("relay.sqs")

BACKOFF_FIRST = 1.0
BACKOFF_CAP = 60.0


class _Fate(Enum):
    """What happens to a message once its batch is handled."""

    DELETE = "delete"  # committed (or its rejection recorded): gone from the queue
    KEEP = "keep"  # invalid, kept for the queue's redrive policy (on_invalid: keep)
    RETRY = "retry"  # the store failed: left for the visibility timeout to return


class StoreUnavailable(Exception):
    """Some messages of a batch could not be committed."""


@dataclass
class ConsumerStatus:
    """What ``/readyz`` shows for one consumer; counters are since the process started."""

    integration: str
    queue: str
    state: str = "starting"  # starting | running | backing_off | error | stopped
    last_error: str | None = None
    last_error_at: str | None = None
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    deleted: int = 0
    kept: int = 0
    delete_failed: int = 0


def _signature(message: dict[str, Any]) -> str | None:
    for name, attr in (message.get("MessageAttributes") or {}).items():
        if name.upper() == SQS_ATTRIBUTE:
            return attr.get("StringValue")
    return None


class Consumer:
    """Polls one integration's queue until stopped; never raises out of ``run``."""

    def __init__(
        self, integration_id: str, cfg: SqsConfig, ingest: Ingest, *, grace: float = 10.0
    ) -> None:
        self.integration_id = integration_id
        self.cfg = cfg
        self.ingest = ingest
        self.grace = grace
        self.status = ConsumerStatus(integration=integration_id, queue=cfg.queue_url)
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._extra = {"integration": integration_id}
        # relay_sqs_messages_*_total: what /readyz counts per consumer, for Prometheus
        self._received = metrics.SQS_RECEIVED.labels(integration_id)
        self._deleted = metrics.SQS_DELETED.labels(integration_id)
        self._rejected = metrics.SQS_REJECTED.labels(integration_id)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name=f"sqs:{self.integration_id}")

    async def stop(self) -> None:
        """Stop polling; the in-flight batch gets ``grace`` seconds to commit and delete."""
        self._stopping.set()
        if self._task is None or self._task.done():
            return
        log.info("sqs consumer stopping", extra=self._extra)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self.grace)
        except TimeoutError:
            log.warning("sqs consumer did not finish its batch in time", extra=self._extra)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run(self) -> None:
        log.info("sqs consumer started", extra={**self._extra, "queue": self.cfg.queue_url})
        failures = 0
        failing = False  # an sqs_consumer incident was reported open, not yet resolved
        while not self._stopping.is_set():
            try:
                async with create_client(self.cfg) as client:
                    while not self._stopping.is_set():
                        messages = await self._receive(client)
                        if messages is None:
                            break
                        if messages:
                            await self._batch(client, messages)
                        elif self.status.state == "backing_off":
                            continue  # the store is not proven healthy until a batch commits
                        if failing:  # the queue answers again
                            failing = False
                            self.ingest.report(SQS_CONSUMER, self.integration_id, None)
                        self.status.state = "running"
                        failures = 0
            except StoreUnavailable as exc:
                failures += 1
                await self._back_off("backing_off", f"store unavailable: {exc}", failures)
            except Exception as exc:  # an unreachable queue must never become a crash loop
                failures += 1
                error = describe(exc, self.cfg.queue_url)
                if not failing:
                    failing = True
                    self.ingest.report(SQS_CONSUMER, self.integration_id, f"cannot read: {error}")
                await self._back_off("error", error, failures)
        self.status.state = "stopped"
        log.info("sqs consumer stopped", extra={**self._extra, **asdict(self.status)})

    async def _back_off(self, state: str, error: str, failures: int) -> None:
        delay = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (failures - 1))
        self.status.state = state
        self.status.last_error = error
        self.status.last_error_at = datetime.now(UTC).isoformat(timespec="seconds")
        log.error(
            "sqs %s: %s; retrying in %gs", self.integration_id, error, delay, extra=self._extra
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    async def _receive(self, client: Any) -> list[dict[str, Any]] | None:
        """One long poll; None when stopping interrupted it (its messages return on their own)."""
        poll = asyncio.ensure_future(
            client.receive_message(
                QueueUrl=self.cfg.queue_url,
                MaxNumberOfMessages=self.cfg.max_messages,
                WaitTimeSeconds=self.cfg.wait_time,
                VisibilityTimeout=self.cfg.visibility_timeout,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
            )
        )
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({poll, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not poll.done():
                poll.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await poll
        if poll.cancelled():
            return None
        messages: list[dict[str, Any]] = poll.result().get("Messages", [])
        return messages

    async def _batch(self, client: Any, messages: list[dict[str, Any]]) -> None:
        """Store every message (concurrently), delete the committed ones, then report failures."""
        self.status.received += len(messages)
        self._received.inc(len(messages))
        keeper = asyncio.create_task(self._keep_invisible(client, messages))
        try:
            fates = await asyncio.gather(*(self._handle(m) for m in messages))
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        done = [m for m, fate in zip(messages, fates, strict=True) if fate is _Fate.DELETE]
        await self._delete(client, done)
        failed = sum(f is _Fate.RETRY for f in fates)
        if failed:
            raise StoreUnavailable(
                f"{failed} of {len(messages)} messages not committed ({self.status.last_error})"
            )

    async def _handle(self, message: dict[str, Any]) -> _Fate:
        attrs = message.get("Attributes") or {}
        meta = {
            "message_id": message.get("MessageId"),
            "receive_count": int(attrs.get("ApproximateReceiveCount", 0)),
            "sent_timestamp": int(attrs.get("SentTimestamp", 0)) or None,
        }
        raw, event, reason = self._check(message)
        if event is None:
            return await self._reject(reason or "invalid", raw, meta)
        try:
            recorded = await self.ingest.accept(event, transport="sqs", meta=meta)
        except RowRefused as exc:  # the store can never hold it: invalid, not "retry later"
            return await self._reject(str(exc), raw, meta)
        except Exception as exc:
            self.status.last_error = describe(exc)
            log.error("store unavailable: %s", describe(exc), extra=self._extra)
            return _Fate.RETRY
        if recorded.duplicate:
            self.status.duplicates += 1
        else:
            self.status.stored += 1
        return _Fate.DELETE

    def _check(self, message: dict[str, Any]) -> tuple[bytes, Event | None, str | None]:
        """The body's exact bytes, and its event or the reason it is refused."""
        body: str = message.get("Body", "")
        try:
            raw = body.encode("utf-8")
        except UnicodeEncodeError:
            return body.encode("utf-8", "replace"), None, "body is not valid UTF-8"
        signature = _signature(message)
        if not signature:
            return raw, None, f"missing {SQS_ATTRIBUTE}"
        if not verify(raw, self.cfg.verify_secret, signature):
            return raw, None, "bad signature"
        try:
            event = parse(raw)
        except InvalidEvent as exc:
            return raw, None, str(exc)
        if event.integration_id != self.integration_id:
            return raw, None, "body integrationId is not this queue's integration"
        return raw, event, None

    async def _reject(self, reason: str, raw: bytes, meta: dict[str, Any]) -> _Fate:
        self.status.rejected += 1
        self._rejected.inc()
        recorded = await self.ingest.reject(
            transport="sqs",
            reason=reason,
            integration_id=self.integration_id,
            body=raw,
            meta={**meta, "on_invalid": self.cfg.on_invalid},
        )
        if not recorded:  # not even the rejection is stored: leave the message in the queue
            return _Fate.RETRY
        if self.cfg.on_invalid == "keep":
            self.status.kept += 1
            return _Fate.KEEP
        return _Fate.DELETE

    async def _delete(self, client: Any, messages: list[dict[str, Any]]) -> None:
        if not messages:
            return
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
        ]
        response = await client.delete_message_batch(QueueUrl=self.cfg.queue_url, Entries=entries)
        deleted = len(response.get("Successful", []))
        self.status.deleted += deleted
        self._deleted.inc(deleted)
        for failure in response.get("Failed", []):
            # Committed already: the redelivery will be absorbed as a duplicate.
            self.status.delete_failed += 1
            message = messages[int(failure["Id"])]
            log.warning(
                "could not delete message %s: %s %s",
                message.get("MessageId"),
                failure.get("Code"),
                failure.get("Message"),
                extra=self._extra,
            )

    async def _keep_invisible(self, client: Any, messages: list[dict[str, Any]]) -> None:
        """While a batch is in flight, keep pushing its visibility timeout ahead of it."""
        timeout = self.cfg.visibility_timeout
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": timeout}
            for i, m in enumerate(messages)
        ]
        while True:
            await asyncio.sleep(timeout / 3)  # two chances before it lapses
            try:
                response = await client.change_message_visibility_batch(
                    QueueUrl=self.cfg.queue_url, Entries=entries
                )
            except Exception as exc:
                log.warning(
                    "could not extend visibility: %s",
                    describe(exc, self.cfg.queue_url),
                    extra=self._extra,
                )
                continue
            for failure in response.get("Failed", []):
                log.warning(
                    "could not extend visibility: %s", failure.get("Code"), extra=self._extra
                )


class SqsConsumers:
    """This process's consumers, one per SQS integration."""

    def __init__(self, settings: Settings, ingest: Ingest) -> None:
        grace = float(settings.dispatch.shutdown_grace)
        self.consumers = [
            Consumer(iid, integ.sqs, ingest, grace=grace)
            for iid, integ in settings.integrations.items()
            if integ.transport == "sqs" and integ.sqs is not None
        ]

    def __len__(self) -> int:
        return len(self.consumers)

    def start(self) -> None:
        for consumer in self.consumers:
            consumer.start()

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.consumers))

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {c.integration_id: asdict(c.status) for c in self.consumers}


def consumes_here(settings: Settings, process: str, flag: bool | None) -> bool:
    """``--sqs``/``--no-sqs`` win; otherwise ``sqs.consume_in`` names the process(es)."""
    if flag is not None:
        return flag
    return settings.sqs.consume_in in (process, "both")
