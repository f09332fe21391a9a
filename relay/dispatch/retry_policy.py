"""The retry policy: what one attempt's result means for its delivery."""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta

from relay.config import DeliveryPolicy
from relay.errors import excerpt
from relay.store.queue import Claim, Outcome
from relay.store.tables import utcnow


def retry_delay(policy: DeliveryPolicy, attempt: int, retry_after: float | None) -> float:
    """The schedule's delay for this attempt with jitter; the target's Retry-After wins if later."""
    base = policy.schedule[min(attempt, len(policy.schedule)) - 1]
    delay = base * random.uniform(1 - policy.jitter, 1 + policy.jitter)
    return max(delay, retry_after or 0.0)


def attempt_outcome(
    claim: Claim,
    policy: DeliveryPolicy,
    kind: str,
    started: datetime,
    t0: float,
    error: str | None,
    code: int | None,
    retry_after: float | None,
    pause: datetime | None,
) -> Outcome:
    """What an attempt comes to under the connector's policy: the delivery's next state, and
    when it is tried again."""
    duration_ms = int((time.perf_counter() - t0) * 1000)
    error = excerpt(error, 2000) if error else None
    if kind == "retry" and claim.attempt >= policy.max_attempts:
        kind, error = "dead", f"gave up after {claim.attempt} attempts: {error}"
    if kind == "succeeded":
        return Outcome("succeeded", kind, started, duration_ms, status_code=code)
    if kind == "dead":
        return Outcome("dead", kind, started, duration_ms, status_code=code, error=error)
    if kind == "paused":
        return Outcome(
            "pending",
            kind,
            started,
            duration_ms,
            next_attempt_at=pause,
            status_code=code,
            error=error,
            pause_until=pause,
        )
    delay = retry_delay(policy, claim.attempt, retry_after)
    return Outcome(
        "pending",
        kind,
        started,
        duration_ms,
        next_attempt_at=utcnow() + timedelta(seconds=delay),
        status_code=code,
        error=error,
    )
