"""The delivery loop: claim due deliveries, run connectors, apply the retry policy.

Each connector gets its own concurrency budget and claims only what it can run, so a slow CRM
delays nothing but its own deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from functools import partial

from relay import metrics
from relay.config import CircuitPolicy, DeliveryPolicy
from relay.connector import Connector, DeliveryContext
from relay.dispatch.attempt_timeouts import Deadlines
from relay.dispatch.circuit_breaker import Breakers
from relay.dispatch.connector_pool import Changes, Connectors
from relay.dispatch.retry_policy import attempt_outcome, classify
from relay.secrets import Redactor
from relay.store.queue import Claim, Outcome, QueueSession, aware
from relay.store.states import DeliveryState, OutcomeKind
from relay.store.tables import utcnow
from relay.wildix import parse

log = logging.getLogger("relay.dispatch")


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


# Outcomes commit in batches: one transaction for many finished deliveries.
MAX_COMMIT = 500
COMMIT_TRIES = 5
WATCH_TICK = 1.0  # seconds between looks at the attempts' deadlines
# Bound once: the success path runs per delivery.
_SUCCEEDED, _DELIVERED = DeliveryState.SUCCEEDED, OutcomeKind.SUCCEEDED


class Dispatcher:
    def __init__(
        self, connectors: Connectors, *, worker: str | None = None, redact: Redactor | None = None
    ) -> None:
        self.connectors = connectors
        self.store = connectors.store
        self.settings = connectors.settings.dispatch
        self.worker = worker or worker_id()
        self._wake = asyncio.Event()
        self._stopping = False
        # Per connector: every claimed delivery's task, the ids of those still waiting for one
        # of the connector's ``concurrency`` slots, and the slots.
        self._inflight: dict[str, dict[int, asyncio.Task[None]]] = {
            name: {} for name in connectors.instances
        }
        self._waiting: dict[str, set[int]] = {name: set() for name in connectors.instances}
        self._slots = {
            name: asyncio.Semaphore(policy.concurrency)
            for name, policy in connectors.policies.items()
        }
        self._paused_cache: dict[str, datetime] = {}
        self._paused_at = -math.inf
        # Pauses this process's own attempts asked for: a re-read of the stored ones that began
        # before such a pause was committed must not forget it.
        self._own_pauses: dict[str, datetime] = {}
        # Finished deliveries wait here for the next commit; one flusher task commits them.
        self._finished: list[tuple[Claim, Outcome]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._more = asyncio.Event()  # an outcome was queued, or the last delivery ended
        self._running = 0  # deliveries in flight, all connectors
        self._loggers = {name: ctx.log.logger for name, ctx in connectors.contexts.items()}
        self._deadlines = Deadlines(WATCH_TICK)
        # Errors are stored and shown (API, dashboard): a target's error body can echo a secret.
        self._redact = redact or Redactor(connectors.settings.secret_values())
        self._breakers = Breakers(
            self.store,
            _circuits(connectors),
            worker=self.worker,
            poll_interval=self.settings.poll_interval,
        )

    def wake(self) -> None:
        """Something new may be due (an event was stored, a delivery finished)."""
        self._wake.set()

    async def run(self) -> None:
        log.info("dispatcher started", extra={"worker": self.worker})
        failures = 0
        while not self._stopping:
            try:
                # one connection for claims while deliveries are in flight (see Store.session)
                async with self.store.session() as db:
                    while not self._stopping:
                        self._wake.clear()
                        busy = await self._claim_round(db)
                        failures = 0
                        if busy:
                            continue
                        if not self._running:
                            break
                        await self._idle()
            except Exception as exc:  # the database is away: back off, keep the loop alive
                failures += 1
                log.error("claiming deliveries failed: %s", exc, extra={"worker": self.worker})
                await asyncio.sleep(min(30.0, 0.5 * 2**failures))
                continue
            if not self._stopping:
                await self._idle()

    async def _idle(self) -> None:
        """Until something may be due: a wake-up, or the poll interval."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval)

    def _claimable(self, name: str, policy: DeliveryPolicy) -> int:
        """How many to claim now: in batches, not one row per finished delivery.

        Up to half the concurrency again is claimed ahead, waiting for a slot: fast deliveries
        finish in step, and without a next batch at hand every slot would sit idle for the
        claim's round trips.
        """
        ahead = policy.concurrency + policy.concurrency // 2
        free = ahead - len(self._inflight[name])
        if free <= 0 or (free < ahead and free < max(1, policy.concurrency // 2)):
            return 0
        return free

    async def _claim_round(self, db: QueueSession) -> bool:
        """Claim for every connector with spare capacity; True if it should go again at once."""
        paused = await self._paused()
        await self._breakers.refresh()
        again = False
        # a reload swaps these mappings, never edits them: one round sees one config
        policies, instances = self.connectors.policies, self.connectors.instances
        for name, policy in policies.items():
            if name in paused or self._stopping:
                continue
            free = self._claimable(name, policy)
            if not free:
                continue
            lease = policy.timeout + self.settings.lease
            if self._breakers.holds(name):  # its circuit is open: at most the one probe goes
                await self._probe(db, name, policy, instances[name], lease)
                continue
            connector = instances[name]
            claims = await db.claim(
                name, free, worker=self.worker, lease=lease, coalesce=connector.coalesce_calls
            )
            if not await self._start(name, policy, connector, claims):
                return False
            again = again or (len(claims) == free)
        return again

    async def _probe(
        self,
        db: QueueSession,
        name: str,
        policy: DeliveryPolicy,
        connector: Connector,
        lease: float,
    ) -> None:
        """Send the cluster's one probe delivery, if its cool-down is over and we win the slot."""
        if not self._breakers.probe_due(name) or not await self._breakers.claim_probe(name, lease):
            return
        claims = await db.claim(
            name, 1, worker=self.worker, lease=lease, coalesce=connector.coalesce_calls
        )
        if not claims:
            await self._breakers.unused_probe(name)
            return
        self._breakers.probing(name, claims[0].delivery_id)
        await self._start(name, policy, connector, claims)

    async def _start(
        self, name: str, policy: DeliveryPolicy, connector: Connector, claims: list[Claim]
    ) -> bool:
        """A task per claim; False when stop() began meanwhile (the claims went back)."""
        if self._stopping:  # stop() began while we claimed: hand them straight back
            await self.store.release([c.delivery_id for c in claims], worker=self.worker)
            return False
        if not claims:
            return True
        if self.connectors.instances.get(name) is not connector:  # reloaded meanwhile
            await self.store.release([c.delivery_id for c in claims], worker=self.worker)
            return True
        running, waiting = self._inflight[name], self._waiting[name]
        self._running += len(claims)
        claimed_at = time.monotonic()
        for claim in claims:
            ctx = self.connectors.delivery_context(claim)
            task = asyncio.create_task(self._deliver(claim, policy, connector, ctx, claimed_at))
            running[claim.delivery_id] = task
            waiting.add(claim.delivery_id)
            task.add_done_callback(partial(self._done, name, claim.delivery_id))
        return True

    async def _paused(self) -> dict[str, datetime]:
        """Quota pauses, re-read at most once per poll interval (they last minutes to hours)."""
        now = time.monotonic()
        if now - self._paused_at >= self.settings.poll_interval:
            stored = await self.store.paused_connectors()
            self._paused_at = now
            until = utcnow()
            self._own_pauses = {n: t for n, t in self._own_pauses.items() if t > until}
            for name, t in self._own_pauses.items():
                stored[name] = max(t, stored.get(name, t))
            self._paused_cache = stored
        if not self._paused_cache:
            return self._paused_cache
        until = utcnow()
        return {name: t for name, t in self._paused_cache.items() if t > until}

    def _done(self, name: str, delivery_id: int, _task: asyncio.Task[None]) -> None:
        self._inflight[name].pop(delivery_id, None)
        self._running -= 1
        if not self._running:  # a flusher waiting for more outcomes may let its writer go
            self._more.set()
        # Waking the claim loop per finished delivery would cost a loop turn each; it only
        # has work once a connector has room for a batch.
        policy = self.connectors.policies.get(name)  # None once a reload removed it
        if policy is not None and self._claimable(name, policy):
            self._wake.set()

    def adopt(self, changes: Changes) -> None:
        """Claim for the connectors a reload added or changed, with their own slots."""
        for name in (*changes.added, *changes.changed):
            self._inflight.setdefault(name, {})
            self._waiting.setdefault(name, set())
            self._slots[name] = asyncio.Semaphore(self.connectors.policies[name].concurrency)
        contexts = self.connectors.contexts
        self._loggers = self._loggers | {n: contexts[n].log.logger for n in changes.added}
        # a removed connector keeps its policy while its last attempts report to its circuit
        self._breakers.policies = {**self._breakers.policies, **_circuits(self.connectors)}
        self._wake.set()

    async def retire(self, names: Sequence[str]) -> None:
        """A reload removed or replaced these connectors: claims still waiting for a slot go
        back to the queue unattempted, attempts already running finish as they began."""
        waiting: dict[int, asyncio.Task[None]] = {}
        started: list[asyncio.Task[None]] = []
        for name in names:
            for i, task in self._inflight.get(name, {}).items():
                if i in self._waiting.get(name, ()):
                    waiting[i] = task
                else:
                    started.append(task)
        for task in waiting.values():
            task.cancel()
        await asyncio.gather(*waiting.values(), return_exceptions=True)
        if waiting:
            await self.store.release(list(waiting), worker=self.worker)
            for name in names:
                self._waiting.get(name, set()).difference_update(waiting)
        if started:
            await asyncio.wait(started)

    async def _deliver(
        self,
        claim: Claim,
        policy: DeliveryPolicy,
        connector: Connector,
        ctx: DeliveryContext,
        claimed_at: float,
    ) -> None:
        """Wait for one of the connector's slots, then attempt the delivery."""
        slots = self._slots[claim.connector]
        await slots.acquire()
        try:
            self._waiting[claim.connector].discard(claim.delivery_id)
            why = self._give_back(claim, claimed_at)
            if why:
                self._breakers.forget_probe(claim)
                await self.store.release([claim.delivery_id], worker=self.worker)
                ctx.log.info("claim released unattempted: %s", why)
                return
            await self._attempt(claim, policy, connector, ctx)
        finally:
            slots.release()

    def _give_back(self, claim: Claim, claimed_at: float) -> str | None:
        """Why a claim that waited for a slot should go back to the queue instead of running."""
        if time.monotonic() - claimed_at > self.settings.lease / 2:
            return "it waited so long for a free slot that its lease could run out mid-attempt"
        pause = self._paused_cache.get(claim.connector)
        if pause is not None and pause > utcnow():
            return "the connector was paused while it waited for a free slot"
        if self._breakers.holds(claim.connector) and not self._breakers.is_probe(claim):
            return "the connector's circuit opened while it waited for a free slot"
        return None

    async def _attempt(
        self, claim: Claim, policy: DeliveryPolicy, connector: Connector, ctx: DeliveryContext
    ) -> None:
        started, t0 = utcnow(), time.perf_counter()
        try:
            event = parse(claim.raw)
            async with self._deadlines.timeout(policy.timeout) as limit:
                try:
                    await connector.deliver(event, ctx)
                finally:
                    self._deadlines.forget(limit)
        except Exception as exc:
            failure = classify(exc, status_code=ctx.status_code, limit=policy.timeout)
            failure = replace(failure, error=self._redact(failure.error))  # before any excerpt
            if failure.unexpected:
                ctx.log.exception("connector raised %s", type(exc).__name__)
        else:  # the common case, kept short: no error to shape, one log line
            duration_ms = int((time.perf_counter() - t0) * 1000)
            outcome = Outcome(_SUCCEEDED, _DELIVERED, started, duration_ms, None, ctx.status_code)
            logger = self._loggers[claim.connector]
            if logger.isEnabledFor(logging.INFO):
                extra = ctx.log_fields()
                extra["outcome"], extra["status_code"] = _DELIVERED, ctx.status_code
                extra["duration_ms"] = duration_ms
                logger.info("delivered", extra=extra)
            metrics.observe_attempt(claim.connector, _DELIVERED, duration_ms)
            self._finish(claim, outcome)
            if self._breakers.watches(claim.connector):
                await self._breakers.report(claim, False, None)
            return
        held_until = await self._breakers.report(claim, failure.blames_target, failure.error)
        duration_ms = int((time.perf_counter() - t0) * 1000)
        outcome = attempt_outcome(
            claim, policy, failure, started, duration_ms, held_until=held_until
        )
        self._log(ctx, outcome)
        metrics.observe_attempt(claim.connector, outcome.kind, outcome.duration_ms)
        self._finish(claim, outcome)

    @staticmethod
    def _log(ctx: DeliveryContext, outcome: Outcome) -> None:
        """A failed attempt's line: an error once it is dead, a warning while it will retry."""
        extra = {
            "outcome": outcome.kind,
            "status_code": outcome.status_code,
            "duration_ms": outcome.duration_ms,
        }
        if outcome.kind == OutcomeKind.DEAD:
            ctx.log.error("delivery dead: %s", outcome.error, extra=extra)
        else:
            ctx.log.warning(
                "delivery %s until %s: %s",
                outcome.kind,
                outcome.next_attempt_at,
                outcome.error,
                extra=extra,
            )

    def _finish(self, claim: Claim, outcome: Outcome) -> None:
        """Queue the outcome for the next commit; the delivery's slot is free from now on."""
        if outcome.pause_until is not None:  # our own pause holds back our next claims at once
            pause = self._own_pauses[claim.connector] = aware(outcome.pause_until)
            self._paused_cache[claim.connector] = pause
        self._finished.append((claim, outcome))
        self._more.set()
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="relay-dispatch-commit")

    async def _flush(self) -> None:
        """Commit finished outcomes, each batch what finished during the previous commit.

        The writer (a database connection) is kept while deliveries are running, so a busy
        dispatcher does not pay a pool checkout per commit. A batch that cannot be committed
        is retried with backoff, then given up: lease expiry hands its deliveries out again.
        """
        failures = 0
        try:
            while self._finished:
                size = 0
                try:
                    async with self.store.session() as db:
                        while self._finished or self._running:
                            if not self._finished:
                                self._more.clear()
                                await self._more.wait()
                                continue
                            batch = self._finished[:MAX_COMMIT]
                            size = len(batch)
                            moved = await db.finish_batch(batch, worker=self.worker)
                            del self._finished[:size]
                            size = failures = 0
                            self._committed(batch, moved)
                except Exception as exc:
                    failures += 1
                    size = size or min(len(self._finished), MAX_COMMIT)
                    log.error(
                        "recording %d outcomes failed (%s), %s",
                        size,
                        exc,
                        "giving up" if failures == COMMIT_TRIES else "retrying",
                        extra={"worker": self.worker},
                    )
                    if failures == COMMIT_TRIES:
                        del self._finished[:size]
                        failures = 0
                    else:
                        await asyncio.sleep(0.2 * 2 ** (failures - 1))
        finally:
            self._flusher = None

    def _committed(self, done: Sequence[tuple[Claim, Outcome]], moved: int) -> None:
        self._wake.set()  # later deliveries of the same calls are free to go now
        if moved < len(done):
            log.warning(
                "%d deliveries' leases were taken over before completion",
                len(done) - moved,
                extra={"worker": self.worker},
            )

    async def _drain(self) -> None:
        """Wait for every finished outcome to be committed."""
        while self._flusher is not None:
            await asyncio.shield(self._flusher)

    async def stop(self) -> None:
        """Stop claiming; in-flight deliveries get the grace period, then are released.

        Claims still waiting for a slot are released at once, without an attempt.
        """
        self._stopping = True
        self._wake.set()
        unstarted = {
            i: t
            for name, tasks in self._inflight.items()
            for i, t in tasks.items()
            if i in self._waiting[name]
        }
        for task in unstarted.values():
            task.cancel()
        await asyncio.gather(*unstarted.values(), return_exceptions=True)
        ids = list(unstarted)
        tasks = {i: t for running in self._inflight.values() for i, t in running.items()}
        if tasks:
            _, pending = await asyncio.wait(tasks.values(), timeout=self.settings.shutdown_grace)
            ids += [i for i, t in tasks.items() if t in pending]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if ids:
            released = await self.store.release(ids, worker=self.worker)
            log.warning("released %d unfinished deliveries at shutdown", released)
        await self._drain()
        self._deadlines.close()


def _circuits(connectors: Connectors) -> dict[str, CircuitPolicy]:
    return {name: inst.circuit for name, inst in connectors.settings.connectors.items()}
