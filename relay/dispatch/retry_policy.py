"""The retry policy: what one attempt's result means for its delivery.

Two steps, both plain functions: ``classify`` reads what a connector raised into a ``Failure``
through one ordered table (the outcome contract of relay.errors, plus what the network and the
attempt's time limit raise), and ``attempt_outcome`` applies the connector's policy to it: the
delivery's next state and when it is tried again.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx

from relay.config import DeliveryPolicy
from relay.errors import AuthError, PauseConnector, PermanentError, RetryableError, excerpt
from relay.store.queue import Claim, Outcome
from relay.store.states import DeliveryState, OutcomeKind
from relay.store.tables import utcnow
from relay.wildix import InvalidEvent


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed attempt as the policy needs it: which way it goes, and the target's say."""

    kind: OutcomeKind  # RETRY, DEAD or PAUSED
    error: str
    status_code: int | None = None
    retry_after: float | None = None  # seconds, from the target's Retry-After
    pause_until: datetime | None = None
    unexpected: bool = False  # not part of the outcome contract: worth a traceback in the log
    # Whom it blames, for the connector's circuit breaker: True the target (down, overloaded,
    # unreachable, or refusing the connector's credentials), False the event (the target
    # answered, and refused it), None neither.
    blames_target: bool | None = None


# How each exception reads, given the status the attempt last saw (``ctx.check_response``) and
# the attempt's time limit.
Reader = Callable[[Any, int | None, float], Failure]


def target_status(code: int | None) -> bool:
    """A retryable status that says the target is in trouble rather than the event: any 5xx,
    408 and 429 (a 429 with a quota body is the connector's PauseConnector, not this)."""
    return code is None or code >= 500 or code in (408, 429)


def _paused(exc: PauseConnector, _seen: int | None, _limit: float) -> Failure:
    return Failure(OutcomeKind.PAUSED, exc.message, exc.status_code, pause_until=exc.until)


def _dead(exc: PermanentError | InvalidEvent, _seen: int | None, _limit: float) -> Failure:
    code = getattr(exc, "status_code", None)
    # a status means the target answered (the event's fault); an InvalidEvent blames no one
    return Failure(OutcomeKind.DEAD, str(exc), code, blames_target=False if code else None)


def _retryable(exc: RetryableError, _seen: int | None, _limit: float) -> Failure:
    return Failure(
        OutcomeKind.RETRY,
        exc.message,
        exc.status_code,
        retry_after=exc.retry_after,
        blames_target=target_status(exc.status_code),
    )


def _rejected(exc: AuthError, _seen: int | None, _limit: float) -> Failure:
    """Rejected credentials stop every event of the connector, as an outage does: the breaker
    holds its deliveries until a probe finds the (fixed) credentials accepted."""
    return Failure(
        OutcomeKind.RETRY,
        exc.message,
        exc.status_code,
        retry_after=exc.retry_after,
        blames_target=True,
    )


def _timed_out(_exc: TimeoutError, seen: int | None, limit: float) -> Failure:
    return Failure(OutcomeKind.RETRY, f"timed out after {limit:g}s", seen, blames_target=True)


def _unreachable(exc: httpx.TransportError, _seen: int | None, _limit: float) -> Failure:
    return Failure(OutcomeKind.RETRY, f"{type(exc).__name__}: {exc}", blames_target=True)


def _unexpected(exc: BaseException, seen: int | None, _limit: float) -> Failure:
    return Failure(OutcomeKind.RETRY, f"{type(exc).__name__}: {exc}", seen, unexpected=True)


# First match wins, so subclasses come before their bases (AuthError is a RetryableError);
# anything not listed is a bug or a surprise in the connector, and is retried.
CLASSIFY: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], Reader], ...] = (
    (PauseConnector, _paused),
    ((PermanentError, InvalidEvent), _dead),
    (AuthError, _rejected),
    (RetryableError, _retryable),
    (TimeoutError, _timed_out),
    (httpx.TransportError, _unreachable),
    (BaseException, _unexpected),
)


def classify(exc: BaseException, *, status_code: int | None = None, limit: float = 0.0) -> Failure:
    """What an attempt that raised ``exc`` came to, before the policy (attempts left) applies.

    ``status_code`` is the last status the connector recorded, ``limit`` the attempt's time
    limit in seconds (the message of a timeout).
    """
    for types, read in CLASSIFY:
        if isinstance(exc, types):
            return read(exc, status_code, limit)
    raise AssertionError("CLASSIFY ends with BaseException")  # pragma: no cover


def retry_delay(policy: DeliveryPolicy, attempt: int, retry_after: float | None) -> float:
    """The schedule's delay for this attempt with jitter; the target's Retry-After wins if later."""
    base = policy.schedule[min(attempt, len(policy.schedule)) - 1]
    delay = base * random.uniform(1 - policy.jitter, 1 + policy.jitter)
    return max(delay, retry_after or 0.0)


def attempt_outcome(
    claim: Claim,
    policy: DeliveryPolicy,
    failure: Failure,
    started: datetime,
    duration_ms: int,
    *,
    held_until: datetime | None = None,
) -> Outcome:
    """A failed attempt under the connector's policy: dead once its attempts are used up; a
    pause waits without using one (the queue refunds it), and so does a failure that blames
    the target while its circuit is open (``held_until``: when it is due again)."""
    kind, code = failure.kind, failure.status_code
    error = excerpt(failure.error, 2000) if failure.error else None
    if held_until is not None and kind is OutcomeKind.RETRY and failure.blames_target:
        return Outcome(
            DeliveryState.PENDING,
            OutcomeKind.HELD,
            started,
            duration_ms,
            next_attempt_at=held_until,
            status_code=code,
            error=f"circuit open: {error}",
        )
    if kind is OutcomeKind.RETRY and claim.attempt >= policy.max_attempts:
        kind, error = OutcomeKind.DEAD, f"gave up after {claim.attempt} attempts: {error}"
    if kind is OutcomeKind.DEAD:
        return Outcome(
            DeliveryState.DEAD, kind, started, duration_ms, status_code=code, error=error
        )
    if kind is OutcomeKind.PAUSED:
        pause = failure.pause_until
        return Outcome(
            DeliveryState.PENDING,
            kind,
            started,
            duration_ms,
            next_attempt_at=pause,
            status_code=code,
            error=error,
            pause_until=pause,
        )
    delay = retry_delay(policy, claim.attempt, failure.retry_after)
    return Outcome(
        DeliveryState.PENDING,
        kind,
        started,
        duration_ms,
        next_attempt_at=utcnow() + timedelta(seconds=delay),
        status_code=code,
        error=error,
    )
