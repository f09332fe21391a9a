"""Fuzzing the SQS source through moto's server: batches of random and hostile messages (bodies,
signatures, attributes), each batch with one valid neighbour, against one running consumer.

Whatever a batch holds, the consumer never gets stuck (it stays "running" and the queue drains),
every message is either stored or handled as invalid per ``on_invalid`` (deleted, or kept until
the queue's redrive policy moves it to the dead-letter queue), nothing is redelivered forever,
and the valid neighbour is stored: one bad message never fails its batch.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from relay.wildix.signature import SQS_ATTRIBUTE, sign
from tests.fakes.sqs import SECRET_KEY, MotoSqs, Queue
from tests.support.databases import DATABASES
from tests.support.fuzz_bodies import bodies
from tests.support.relay import call_body
from tests.support.sqs import consumer, sqs_settings
from tests.support.threaded_relay import ThreadedRelay, relay_in_thread, until

MAX_RECEIVES = 2  # the redrive policy's maxReceiveCount, for on_invalid: keep


class Consuming:
    """The running relay, its queue, and (for ``keep``) the queue's dead-letter queue."""

    def __init__(self, relay: ThreadedRelay, queue: Queue, dlq: Queue | None) -> None:
        self.relay = relay
        self.queue = queue
        self.dlq = dlq

    def status(self) -> dict[str, Any]:
        return self.relay.call(consumer(self.relay.relay))

    def stored(self, message_id: str) -> bool:
        rows = self.relay.call(self.relay.relay.events())
        return any(r.transport_meta.get("message_id") == message_id for r in rows)


def _dead_letter_queue(moto: MotoSqs, queue: Queue) -> Queue:
    dlq = moto.queue()
    arn = moto.client.get_queue_attributes(QueueUrl=dlq.url, AttributeNames=["QueueArn"])
    policy = {"deadLetterTargetArn": arn["Attributes"]["QueueArn"], "maxReceiveCount": MAX_RECEIVES}
    moto.client.set_queue_attributes(
        QueueUrl=queue.url, Attributes={"RedrivePolicy": json.dumps(policy)}
    )
    return dlq


def _consuming(
    request: pytest.FixtureRequest, tmp: Path, moto: MotoSqs, on_invalid: str
) -> Iterator[Consuming]:
    queue = moto.queue()
    dlq = _dead_letter_queue(moto, queue) if on_invalid == "keep" else None

    def settings_for(url: str):  # type: ignore[no-untyped-def]
        return sqs_settings(
            url,
            {"log": {"type": "log"}},
            {"q7m2xk": queue},
            extra={"logging": {"level": "WARNING"}},
            on_invalid=on_invalid,
        )

    with relay_in_thread(settings_for, request.param, tmp) as running:
        yield Consuming(running, queue, dlq)


@pytest.fixture(scope="module", params=DATABASES)
def deleting(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, moto_sqs: MotoSqs
) -> Iterator[Consuming]:
    yield from _consuming(request, tmp_path_factory.mktemp("fuzz-sqs"), moto_sqs, "delete")


@pytest.fixture(scope="module", params=DATABASES)
def keeping(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, moto_sqs: MotoSqs
) -> Iterator[Consuming]:
    yield from _consuming(request, tmp_path_factory.mktemp("fuzz-sqs"), moto_sqs, "keep")


def _sqs_text(raw: bytes) -> str:
    """A body SQS accepts: UTF-8, only the characters it allows, at most 256 KiB."""
    text = raw.decode("utf-8", "replace")
    allowed = (
        c
        if c in "\t\n\r" or " " <= c <= "\ud7ff" or "\ue000" <= c <= "\ufffd" or c >= "\U00010000"
        else "\ufffd"
        for c in text
    )
    return "".join(allowed)[:200_000]


# how the message is signed: what Wildix does, and what it never does
SIGNINGS = ["correct", "correct", "none", "wrong", "non-ascii", "upper", "binary", "lowercase"]
attribute_names = st.from_regex(r"\A[A-Za-z0-9_-][A-Za-z0-9_.-]{0,40}[A-Za-z0-9_-]\Z").filter(
    lambda name: ".." not in name and not name.lower().startswith(("aws", "amazon", "x-signature"))
)
attribute_values = st.one_of(
    st.tuples(
        st.just("String"), st.text(min_size=1, max_size=50).map(lambda t: _sqs_text(t.encode()))
    ),
    st.tuples(st.just("Number"), st.integers(-(10**30), 10**30).map(str)),
)
messages = st.tuples(
    st.one_of(bodies, st.text(max_size=200).map(str.encode)).map(_sqs_text),
    st.sampled_from(SIGNINGS),
    st.dictionaries(attribute_names, attribute_values, max_size=3),
)
FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


def _entry(index: int, body: str, signing: str, extra: dict[str, tuple[str, str]]) -> dict:
    raw = body.encode("utf-8")
    attrs: dict[str, dict[str, Any]] = {
        name: {"DataType": kind, "StringValue": value} for name, (kind, value) in extra.items()
    }
    good = sign(raw, SECRET_KEY)
    if signing == "binary":
        attrs[SQS_ATTRIBUTE] = {"DataType": "Binary", "BinaryValue": good.encode()}
    elif signing != "none":
        value = {
            "correct": good,
            "lowercase": good,
            "upper": good.upper(),
            "wrong": sign(raw + b"x", SECRET_KEY),
            "non-ascii": "\u00e9" * 64,
        }[signing]
        name = "x-signature" if signing == "lowercase" else SQS_ATTRIBUTE
        attrs[name] = {"DataType": "String", "StringValue": value}
    return {"Id": str(index), "MessageBody": body, "MessageAttributes": attrs}


def _send_batch(
    queue: Queue, batch: list[tuple[str, str, dict[str, tuple[str, str]]]]
) -> tuple[list[str], str]:
    """The hostile messages and one valid neighbour, visible together; (their ids, its id)."""
    neighbour = call_body(f"sqs-fuzz-{uuid.uuid4().hex}").decode()
    entries = [_entry(i, *message) for i, message in enumerate(batch)]
    entries.append(_entry(len(batch), neighbour, "correct", {}))
    response = queue.moto.client.send_message_batch(QueueUrl=queue.url, Entries=entries)
    sent = {int(m["Id"]): m["MessageId"] for m in response.get("Successful", [])}
    assert len(batch) in sent, response.get("Failed")  # moto took the valid neighbour
    return [sent[i] for i in range(len(batch)) if i in sent], sent[len(batch)]


def _check_batch(consuming: Consuming, batch: list[Any], keep: bool) -> None:
    before = consuming.status()
    hostile, neighbour = _send_batch(consuming.queue, batch)
    total = len(hostile) + 1

    last: list[Any] = []

    def handled() -> dict[str, Any] | None:
        status = consuming.status()
        done = sum(status[k] - before[k] for k in ("stored", "duplicates", "rejected"))
        last[:] = [status, consuming.queue.counts()]
        # its counters move after SQS answered: an empty queue alone is not the delete counted
        deleted = keep or status["deleted"] - before["deleted"] >= total
        return status if done >= total and deleted and last[1] == (0, 0) else None

    # keep: every invalid message is received MAX_RECEIVES times, then redriven
    try:
        status = until(handled, "the batch handled and the queue drained", 30 + 5 * MAX_RECEIVES)
    except AssertionError:
        stuck = f"stuck: consumer {last[0]}, queue (visible, in flight) {last[1]}"
        raise AssertionError(stuck) from None
    assert status["state"] == "running", status
    assert consuming.stored(neighbour), ("the valid neighbour was not stored", status)
    stored = status["stored"] + status["duplicates"] - before["stored"] - before["duplicates"]
    invalid = total - stored
    if keep:
        assert consuming.dlq is not None
        until(
            lambda: consuming.dlq.counts()[0] >= invalid,  # type: ignore[union-attr]
            f"{invalid} invalid messages in the dead-letter queue",
        )
        for message in consuming.dlq.take():  # ready for the next example
            consuming.dlq.moto.client.delete_message(
                QueueUrl=consuming.dlq.url, ReceiptHandle=message["ReceiptHandle"]
            )
    else:
        assert status["deleted"] - before["deleted"] == total, (status, before)
    assert consuming.queue.counts() == (0, 0)  # and nothing comes back


batches = st.lists(messages, min_size=1, max_size=5)
NESTED = ("[" * 5000 + "]" * 5000, "correct", {})  # the body that poisoned its batch (issue 17)


@given(batch=batches)
@settings(FUZZ, max_examples=40)
@example(batch=[NESTED])
@example(batch=[(call_body("it_nul").decode().replace("it_nul", "it\\u0000nul"), "correct", {})])
def test_hostile_messages_are_deleted_as_invalid_and_never_hold_up_the_valid_one(
    deleting: Consuming, batch: list[Any]
) -> None:
    _check_batch(deleting, batch, keep=False)


@given(batch=st.lists(messages, min_size=1, max_size=9))
@settings(FUZZ, max_examples=4)
@example(batch=[NESTED])
def test_hostile_messages_kept_go_to_the_dead_letter_queue_and_the_valid_one_is_stored(
    keeping: Consuming, batch: list[Any]
) -> None:
    _check_batch(keeping, batch, keep=True)
