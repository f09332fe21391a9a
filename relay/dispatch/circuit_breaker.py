"""Circuit breakers: a connector whose target is down stops spending its deliveries' attempts.

After ``circuit.failures`` consecutive failures that blame the target (``Failure.blames_target``:
connection errors, timeouts, 5xx, a 429 without a quota body, rejected credentials) the
connector's circuit opens for the whole cluster: its deliveries wait, and any that fail meanwhile
get their attempt back. Once the cool-down is over, one process claims the probe slot
(relay.store.circuits) and sends one delivery: if the target answers (or accepts the fixed
credentials) the circuit closes and the backlog drains; if not it opens again with twice the
cool-down, up to ``circuit.max``. An operator may open a circuit by hand (it then sends no
probes) and close it.

The state machine is a set of plain functions from the stored circuit to its next value; the
store applies them under the row's lock. ``Breakers`` is one dispatcher's view of the stored
circuits, re-read at most once per poll interval, like the quota pauses.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta

from relay import metrics
from relay.config import CircuitPolicy
from relay.store.circuits import Change, Circuit, CircuitState
from relay.store.queue import Claim
from relay.store.records import Store
from relay.store.tables import utcnow

log = logging.getLogger("relay.dispatch")

OPEN, HALF_OPEN, CLOSED = CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.CLOSED


# -- the state machine -------------------------------------------------------------------------


def _closed(c: Circuit, reason: str) -> Circuit:
    return Circuit(c.connector, reason=reason)


def _open(c: Circuit, now: datetime, cool_down: float, reason: str) -> Circuit:
    return replace(
        c,
        state=OPEN,
        cool_down=cool_down,
        opened_at=c.opened_at if c.holds else now,
        probe_at=now + timedelta(seconds=cool_down),
        probe_by=None,
        probe_until=None,
        manual=False,
        reason=reason,
    )


def failed(policy: CircuitPolicy, reason: str) -> Change:
    """One more consecutive failure that blames the target: the last one allowed opens it."""

    def change(c: Circuit, now: datetime) -> Circuit | None:
        if c.state is not CLOSED:
            return None
        if c.failures + 1 < policy.failures:
            return replace(c, failures=c.failures + 1)
        why = f"{c.failures + 1} consecutive failures: {reason}"
        return _open(replace(c, failures=c.failures + 1), now, policy.cool_down, why)

    return change


def answered(c: Circuit, _now: datetime) -> Circuit | None:
    """The target answered (success, or a refusal that is the event's fault): the count starts
    again, and a circuit opened by failures closes."""
    if c.manual:
        return None
    if c.holds:
        return _closed(c, "the target answered")
    return replace(c, failures=0) if c.failures else None


def probe_answered(worker: str) -> Change:
    def change(c: Circuit, _now: datetime) -> Circuit | None:
        if c.state is HALF_OPEN and c.probe_by == worker:
            return _closed(c, "the probe got an answer")
        return None

    return change


def probe_failed(policy: CircuitPolicy, worker: str, reason: str) -> Change:
    """Open again, for twice the last cool-down (at most ``policy.max``)."""

    def change(c: Circuit, now: datetime) -> Circuit | None:
        if c.state is not HALF_OPEN or c.probe_by != worker:
            return None
        cool_down = min(max(c.cool_down, policy.cool_down) * 2, policy.max)
        return _open(c, now, cool_down, f"the probe failed: {reason}")

    return change


def probe_unused(worker: str) -> Change:
    """Nothing was due to probe with: open again for the same cool-down."""

    def change(c: Circuit, now: datetime) -> Circuit | None:
        if c.state is not HALF_OPEN or c.probe_by != worker:
            return None
        return _open(c, now, c.cool_down, c.reason or "no delivery to probe with")

    return change


def opened_by_hand(reason: str) -> Change:
    def change(c: Circuit, now: datetime) -> Circuit | None:
        if c.manual:
            return None
        held = replace(c, state=OPEN, probe_at=None, probe_by=None, probe_until=None)
        return replace(held, opened_at=now, manual=True, reason=reason)

    return change


def closed_by_hand(reason: str) -> Change:
    def change(c: Circuit, _now: datetime) -> Circuit | None:
        return None if c.state is CLOSED and not c.failures else _closed(c, reason)

    return change


async def apply(store: Store, connector: str, change: Change, *, worker: str | None) -> Circuit:
    """Store one change; count and log a transition. The circuit as it is now."""
    old, new = await store.change_circuit(connector, change, worker=worker)
    if new.state != old.state:
        metrics.CIRCUIT_TRANSITIONS.labels(connector, new.state).inc()
        level = logging.WARNING if new.holds else logging.INFO
        log.log(
            level,
            "circuit %s: %s → %s (%s)",
            connector,
            old.state,
            new.state,
            new.reason,
            extra={"connector": connector, "worker": worker},
        )
    return new


# -- one dispatcher's view ---------------------------------------------------------------------


class Breakers:
    """The circuits as one dispatcher sees them, and what its attempts report to them."""

    def __init__(
        self,
        store: Store,
        policies: Mapping[str, CircuitPolicy],
        *,
        worker: str,
        poll_interval: float,
    ) -> None:
        self.store = store
        self.policies = policies
        self.worker = worker
        self.poll_interval = poll_interval
        self._cache: dict[str, Circuit] = {}
        self._read_at = -math.inf
        self._probes: dict[str, int] = {}  # connector → its probe delivery, sent by this process

    async def refresh(self) -> None:
        """Re-read the stored circuits, at most once per poll interval."""
        now = time.monotonic()
        if now - self._read_at >= self.poll_interval:
            self._cache = await self.store.circuits()
            self._read_at = now

    def holds(self, connector: str) -> bool:
        circuit = self._cache.get(connector)
        return circuit is not None and circuit.holds

    def probe_due(self, connector: str) -> bool:
        circuit = self._cache.get(connector)
        return circuit is not None and connector not in self._probes and circuit.probe_due(utcnow())

    async def claim_probe(self, connector: str, lease: float) -> bool:
        """Try for the cluster's one probe slot; until the next read, do not try again."""
        won = await self.store.claim_probe(connector, worker=self.worker, lease=lease)
        until = utcnow() + timedelta(seconds=lease)
        self._cache[connector] = replace(self._cache[connector], state=HALF_OPEN, probe_until=until)
        if won:
            metrics.CIRCUIT_TRANSITIONS.labels(connector, HALF_OPEN).inc()
            log.info("circuit %s: probing", connector, extra={"connector": connector})
        return won

    def probing(self, connector: str, delivery_id: int) -> None:
        self._probes[connector] = delivery_id

    def is_probe(self, claim: Claim) -> bool:
        return self._probes.get(claim.connector) == claim.delivery_id

    def forget_probe(self, claim: Claim) -> None:
        """The probe went back unattempted: its slot frees itself when the lease runs out."""
        if self.is_probe(claim):
            del self._probes[claim.connector]

    async def unused_probe(self, connector: str) -> None:
        self._cache[connector] = await apply(
            self.store, connector, probe_unused(self.worker), worker=self.worker
        )

    async def report(
        self, claim: Claim, blames_target: bool | None, error: str | None
    ) -> datetime | None:
        """See ``_report``; the database being away leaves the attempt's outcome as it is."""
        try:
            return await self._report(claim, blames_target, error)
        except Exception as exc:
            log.error("updating the circuit of %s failed: %s", claim.connector, exc)
            return None

    async def _report(
        self, claim: Claim, blames_target: bool | None, error: str | None
    ) -> datetime | None:
        """An attempt's result for its connector's circuit. When the circuit now holds the
        connector's deliveries, when the delivery is due again (now: the open circuit holds it,
        and once it closes, by hand or by a probe, the delivery goes at once): the attempt is
        refunded."""
        name, policy = claim.connector, self.policies[claim.connector]
        cached = self._cache.get(name) or Circuit(name)
        change: Change | None = None
        if self._probes.get(name) == claim.delivery_id:
            del self._probes[name]
            if blames_target is False:
                change = probe_answered(self.worker)
            else:
                change = probe_failed(policy, self.worker, error or "no answer")
        elif blames_target is True and policy.failures:
            change = failed(policy, error or "no answer")
        elif blames_target is False and (cached.failures or (cached.holds and not cached.manual)):
            change = answered
        if change is not None:
            cached = self._cache[name] = await apply(self.store, name, change, worker=self.worker)
        if blames_target is not True or not cached.holds:
            return None
        return utcnow()

    def watches(self, connector: str) -> bool:
        """A success must be reported: the stored count or state is not the resting one."""
        cached = self._cache.get(connector)
        return connector in self._probes or (
            cached is not None and (cached.failures > 0 or cached.holds)
        )
