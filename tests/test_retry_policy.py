"""The retry policy: the ``classify`` table maps each exception a connector can raise to an
outcome, and the policy turns that into the delivery's next state — checked on the table itself
and through the real dispatcher with a plugin that raises on cue."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.config import DeliveryPolicy, Duration
from relay.dispatch.retry_policy import CLASSIFY, Failure, attempt_outcome, classify
from relay.errors import AuthError, PauseConnector, PermanentError, RetryableError
from relay.store.queue import Claim, aware
from relay.store.states import DeliveryState, OutcomeKind
from relay.store.tables import utcnow
from relay.wildix import InvalidEvent, parse
from tests.fakes.receiver import Receiver
from tests.support.relay import call_body, make_settings, run_relay

LATER = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            PauseConnector("out of quota", LATER, status_code=429),
            Failure(OutcomeKind.PAUSED, "out of quota", 429, pause_until=LATER),
        ),
        (
            PermanentError("HTTP 400 bad field", status_code=400),
            Failure(OutcomeKind.DEAD, "HTTP 400 bad field", 400, blames_target=False),
        ),
        (  # rejected credentials stop the connector, not the event: the breaker's business
            AuthError("HTTP 401", status_code=401),
            Failure(OutcomeKind.RETRY, "HTTP 401", 401, blames_target=True),
        ),
        (InvalidEvent("not an event"), Failure(OutcomeKind.DEAD, "not an event")),
        (
            RetryableError("HTTP 429", 7.0, status_code=429),
            Failure(OutcomeKind.RETRY, "HTTP 429", 429, retry_after=7.0, blames_target=True),
        ),
        (
            RetryableError("HTTP 503", status_code=503),
            Failure(OutcomeKind.RETRY, "HTTP 503", 503, blames_target=True),
        ),
        (
            RetryableError("HTTP 423 locked", status_code=423),
            Failure(OutcomeKind.RETRY, "HTTP 423 locked", 423, blames_target=False),
        ),
        (
            TimeoutError(),
            Failure(OutcomeKind.RETRY, "timed out after 3s", 202, blames_target=True),
        ),
        (
            httpx.ConnectError("connection refused"),
            Failure(OutcomeKind.RETRY, "ConnectError: connection refused", blames_target=True),
        ),
        (
            ValueError("not a number"),
            Failure(OutcomeKind.RETRY, "ValueError: not a number", 202, unexpected=True),
        ),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else "",
)
def test_each_exception_kind_maps_to_its_outcome(exc: BaseException, expected: Failure) -> None:
    # 202 is the last status the connector recorded; only a timeout or a surprise keeps it,
    # the outcome contract's errors carry their own
    assert classify(exc, status_code=202, limit=3.0) == expected


def test_no_entry_of_the_table_is_shadowed_by_an_earlier_one() -> None:
    seen: list[type[BaseException]] = []
    for types, _ in CLASSIFY:
        for t in types if isinstance(types, tuple) else (types,):
            assert not any(issubclass(t, earlier) for earlier in seen), t
            seen.append(t)
    assert seen[-1] is BaseException  # anything else at all is retried


POLICY = DeliveryPolicy(max_attempts=3, schedule=[Duration(10), Duration(60)], jitter=0.0)


def claim(attempt: int) -> Claim:
    return Claim(1, 1, "out", "q7m2xk", attempt, b"{}")


def test_a_retry_waits_for_the_schedule_or_a_later_retry_after() -> None:
    started = utcnow()
    on_schedule = attempt_outcome(claim(1), POLICY, classify(ValueError("x")), started, 5)
    assert (on_schedule.state, on_schedule.kind) == (DeliveryState.PENDING, OutcomeKind.RETRY)
    assert on_schedule.next_attempt_at is not None
    assert timedelta(seconds=9) < on_schedule.next_attempt_at - started < timedelta(seconds=11)
    told = attempt_outcome(claim(1), POLICY, classify(RetryableError("x", 300.0)), started, 5)
    assert told.next_attempt_at is not None
    assert told.next_attempt_at - started > timedelta(seconds=299)


def test_attempts_used_up_is_dead() -> None:
    outcome = attempt_outcome(claim(3), POLICY, classify(ValueError("boom")), utcnow(), 5)
    assert (outcome.state, outcome.kind) == (DeliveryState.DEAD, OutcomeKind.DEAD)
    assert outcome.error == "gave up after 3 attempts: ValueError: boom"


def test_a_permanent_error_is_dead_on_the_first_attempt() -> None:
    failure = classify(PermanentError("HTTP 400", status_code=400))
    outcome = attempt_outcome(claim(1), POLICY, failure, utcnow(), 5)
    assert (outcome.state, outcome.status_code, outcome.error) == (
        DeliveryState.DEAD,
        400,
        "HTTP 400",
    )


def test_rejected_credentials_are_held_by_an_open_circuit_and_else_retried_until_dead() -> None:
    failure = classify(AuthError("HTTP 401 bad token", status_code=401))
    held = attempt_outcome(claim(3), POLICY, failure, utcnow(), 5, held_until=LATER)
    assert (held.state, held.kind, held.next_attempt_at) == (
        DeliveryState.PENDING,
        OutcomeKind.HELD,
        LATER,
    )
    # with the breaker off: the schedule, then dead once the attempts are used up
    retried = attempt_outcome(claim(1), POLICY, failure, utcnow(), 5)
    assert (retried.state, retried.kind) == (DeliveryState.PENDING, OutcomeKind.RETRY)
    dead = attempt_outcome(claim(3), POLICY, failure, utcnow(), 5)
    assert (dead.state, dead.error) == (
        DeliveryState.DEAD,
        "gave up after 3 attempts: HTTP 401 bad token",
    )


def test_a_pause_waits_until_the_pause_ends_even_with_no_attempts_left() -> None:
    failure = classify(PauseConnector("out of quota", LATER))
    outcome = attempt_outcome(claim(3), POLICY, failure, utcnow(), 5)
    assert (outcome.state, outcome.kind) == (DeliveryState.PENDING, OutcomeKind.PAUSED)
    assert outcome.next_attempt_at == outcome.pause_until == LATER


RAISER = textwrap.dedent(
    '''
    """Raises what the call id's first word asks for, on the first attempt or on every one."""
    import httpx

    from relay import (
        Connector,
        ConnectorConfig,
        ConnectorContext,
        DeliveryContext,
        Event,
        PauseConnector,
        PermanentError,
        hookimpl,
    )


    class RaiserConfig(ConnectorConfig):
        url: str


    class Raiser(Connector):
        type = "raiser"
        Config = RaiserConfig

        async def start(self, ctx: ConnectorContext) -> None:
            ctx.started_by = self.name  # a connector's own thing, kept on its context

        async def deliver(self, event: Event, ctx: DeliveryContext) -> None:
            what, when = event.call_id.split("-")[:2]
            seen = {
                "call": event.call_id,
                "attempt": ctx.attempt,
                "context": isinstance(ctx, ConnectorContext),
                "started_by": ctx.started_by,
            }
            ctx.check_response(await ctx.http.post(self.config.url, json=seen), "raiser")
            if when == "once" and ctx.attempt > 1:
                return
            if what == "bug":
                raise ValueError("not a number")
            if what == "unreachable":
                raise httpx.ConnectError("connection refused")
            if what == "permanent":
                raise PermanentError("no such account", status_code=404)
            if what == "pause":
                raise PauseConnector("out of quota", 3600, status_code=429)


    @hookimpl
    def register_connectors(register):
        register(Raiser)
    '''
)


async def run_calls(db_url: str, tmp_path: Path, calls: list[str]) -> dict[str, Any]:
    """Post one call per id through the raiser plugin; each delivery and its attempts by call."""
    (tmp_path / "raiser.py").write_text(RAISER)
    async with Receiver() as receiver:
        block = {"type": "raiser", "url": receiver.url, "delivery": {"max_attempts": 2}}
        settings = make_settings(db_url, {"out": block}, plugin_dirs=[str(tmp_path)])
        async with run_relay(settings) as relay:
            ids = {}
            for call in calls:
                assert (await relay.post(call_body(call))).status_code == 200
            rows = await relay.settled()
            for row in rows:
                [event] = [e for e in await relay.events() if e.id == row.event_id]
                ids[parse(event.raw).call_id] = (row, await relay.attempts(row.id))
        seen = [r.json() for r in receiver.requests]
    assert all(s["context"] and s["started_by"] == "out" for s in seen)
    return ids


async def test_each_kind_of_failure_through_the_dispatcher(db_url: str, tmp_path: Path) -> None:
    calls = ["bug-once", "unreachable-once", "permanent-once", "bug-always"]
    got = await run_calls(db_url, tmp_path, calls)
    summary = {
        call: (row.state, row.attempts, [(a.outcome, a.status_code, a.error) for a in tries])
        for call, (row, tries) in got.items()
    }
    assert summary == {
        # an exception outside the contract retries, keeping the status the connector saw
        "bug-once": (
            "succeeded",
            2,
            [("retry", 200, "ValueError: not a number"), ("succeeded", 200, None)],
        ),
        "unreachable-once": (
            "succeeded",
            2,
            [("retry", None, "ConnectError: connection refused"), ("succeeded", 200, None)],
        ),
        "permanent-once": ("dead", 1, [("dead", 404, "no such account")]),
        # attempts used up: dead, saying why
        "bug-always": (
            "dead",
            2,
            [
                ("retry", 200, "ValueError: not a number"),
                ("dead", 200, "gave up after 2 attempts: ValueError: not a number"),
            ],
        ),
    }


async def test_a_pause_refunds_its_attempt(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "raiser.py").write_text(RAISER)
    async with Receiver() as receiver:
        block = {"type": "raiser", "url": receiver.url, "delivery": {"max_attempts": 1}}
        settings = make_settings(db_url, {"out": block}, plugin_dirs=[str(tmp_path)])
        async with run_relay(settings) as relay:
            await relay.post(call_body("pause-always"))

            async def paused() -> list[Any]:
                return [a for r in await relay.deliveries() for a in await relay.attempts(r.id)]

            # the attempt and the delivery's new state are committed together
            [attempt] = await relay.wait_until(paused, what="the paused attempt")
            [row] = await relay.deliveries()
        # with one attempt allowed, a retry would have been dead: a pause is not a failure
        assert (row.state, row.attempts) == ("pending", 0)
        assert (attempt.outcome, attempt.status_code) == ("paused", 429)
        assert aware(row.next_attempt_at) > utcnow() + timedelta(minutes=59)
        assert len(receiver.requests) == 1
