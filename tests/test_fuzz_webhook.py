"""Fuzzing the webhook over real sockets: random and hostile bodies, headers, paths and methods,
signed with the integration's secret and unsigned, against one running relay per database.

Whatever arrives, relay answers one of its documented codes (200/400/401/404/405/413, see
relay/ingest/webhook_endpoint.py) with a complete response — never a 5xx, never a dropped
connection —, stores nothing for a refusal, keeps what it accepts byte-exact, and still accepts
a valid event afterwards.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import msgspec
import pytest
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from sqlalchemy import func, select

from relay.store.tables import deliveries, events, rejections
from relay.wildix.signature import sign
from tests.support.databases import DATABASES
from tests.support.fuzz_bodies import CURRENT_SAMPLES, Shown, bodies
from tests.support.raw_http import Reply, exchange, request_bytes
from tests.support.relay import SECRET, call_body, make_settings
from tests.support.samples import fixture
from tests.support.threaded_relay import ThreadedRelay, relay_in_thread

LIMIT = 1024 * 1024  # server.max_body_size's default, the documented 413 threshold
INTEGRATIONS = {"q7m2xk", "h3p9ta"}  # both share SECRET (tests.support.relay.config_dict)
DOCUMENTED = {200, 400, 401, 404, 405, 413}
FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI stays stable
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],  # no "explain": it reruns ~160 times
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module", params=DATABASES)
def relay(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ThreadedRelay]:
    """One relay per database for the whole module: examples share it, as requests would."""
    tmp: Path = tmp_path_factory.mktemp("fuzz-webhook")

    def settings_for(url: str):  # type: ignore[no-untyped-def]
        return make_settings(url, {"out": {"type": "log"}}, extra={"logging": {"level": "WARNING"}})

    with relay_in_thread(settings_for, request.param, tmp) as running:
        yield running


@dataclass(frozen=True)
class Attempt:
    """One request as the fuzzer sends it, and what the documentation lets relay answer."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    allowed: frozenset[int]
    signed: bool = False  # a valid signature: its refusal may keep a longer excerpt

    def wire(self) -> bytes:
        return request_bytes(self.method, self.target, self.headers, self.body)


def _counts(relay: ThreadedRelay) -> tuple[int, int]:
    async def count() -> tuple[int, int]:
        async with relay.relay.store.engine.connect() as conn:
            n_events = (await conn.execute(select(func.count()).select_from(events))).scalar_one()
            n_deliveries = (
                await conn.execute(select(func.count()).select_from(deliveries))
            ).scalar_one()
        return n_events, n_deliveries

    return relay.call(count())


def _last_rejection(relay: ThreadedRelay) -> int:
    async def last() -> int:
        async with relay.relay.store.engine.connect() as conn:
            top = (await conn.execute(select(func.max(rejections.c.id)))).scalar_one()
        return int(top or 0)

    return relay.call(last())


def _stored(relay: ThreadedRelay, body: bytes) -> list[Any]:
    digest = hashlib.sha256(body).hexdigest()
    return relay.call(relay.relay.rows(events, events.c.body_sha256 == digest))


def _stored_raw(relay: ThreadedRelay, body: bytes) -> list[bytes]:
    return [bytes(row.raw) for row in _stored(relay, body)]


def _not_cut(relay: ThreadedRelay, body: bytes) -> None:
    """An accepted event's type and id are kept whole (PostgreSQL cut them to the column's
    width, silently): whole, or a 400 — only a NUL may be left out of a column."""
    envelope = msgspec.json.decode(body)
    for row in _stored(relay, body):
        for column, key in (("type", "type"), ("subject_id", "id")):
            value = envelope[key]
            kept = getattr(row, column)
            assert len(kept) >= len(value) - value.count("\0"), (column, len(kept), len(value))


def _check(relay: ThreadedRelay, attempt: Attempt) -> Reply:
    """Send one attempt; every invariant that holds whatever the request was."""
    before, seen = _counts(relay), _last_rejection(relay)
    reply = exchange(relay.url, attempt.wire(), head=attempt.method == b"HEAD")
    after = _counts(relay)
    if currently_in_test_context():  # the statistics --hypothesis-show-statistics prints
        event(f"answered {reply.status}")
    assert reply.status < 500, (reply.status, reply.body[:300])
    assert reply.status in attempt.allowed, (
        reply.status,
        sorted(attempt.allowed),
        reply.body[:300],
    )
    if reply.status == 200:
        status = reply.body and reply.headers.get("content-type") == "application/json"
        assert status, reply
        assert after[0] - before[0] in (0, 1)
        assert _stored_raw(relay, attempt.body) == [attempt.body]  # byte-exact, once
        _not_cut(relay, attempt.body)
    else:
        assert after == before, f"a {reply.status} stored something: {before} -> {after}"
    if not attempt.signed:  # anyone's bytes: kept short (issue 17: ids cut, 4 KiB of body)
        for row in relay.call(relay.relay.rows(rejections, rejections.c.id > seen)):
            assert len(row.integration_id or "") <= 64, len(row.integration_id)
            assert len(row.body_excerpt or b"") <= 4096, len(row.body_excerpt)
    return reply


def _still_accepts(relay: ThreadedRelay) -> None:
    """A fresh valid event, signed like Wildix, is accepted and stored."""
    body = call_body(f"fuzz-probe-{uuid.uuid4().hex}")
    headers = [
        (b"content-type", b"application/json"),
        (b"x-signature", sign(body, SECRET).encode()),
    ]
    reply = exchange(relay.url, request_bytes(b"POST", b"/webhooks/q7m2xk", headers, body))
    assert reply.status == 200, ("a valid event after the fuzzing", reply.status, reply.body)
    assert _stored_raw(relay, body) == [body]


def _known(old: bytes, new: bytes):  # type: ignore[no-untyped-def]
    """An explicit example: call_completed with ``old`` replaced by ``new``, signed, by path."""
    body = fixture("call_completed").replace(old, new)
    return example(
        body=Shown(body),
        legacy_path=False,
        in_body_only=False,
        spelling="hex",
        content_type=b"application/json",
        extra=[],
    )


content_types = st.sampled_from(
    [
        b"application/json",
        b"application/json; charset=utf-8",
        b"text/plain",
        b"application/x-www-form-urlencoded",
        b"multipart/form-data; boundary=xyz",
        b"application/json; charset=\xe9\xff",
        b"",
        None,
    ]
)
# header values as HTTP allows them on the wire: visible ASCII, spaces, tabs, and obs-text bytes
header_values = st.binary(max_size=300).map(
    lambda raw: bytes(b for b in raw if b == 9 or 32 <= b <= 126 or b >= 128).strip(b" \t")
)
header_names = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=30
).map(lambda name: ("x-" + name).encode())
extra_headers = st.lists(st.tuples(header_names, header_values), max_size=4)


def _post_headers(
    content_type: bytes | None, extra: list[tuple[bytes, bytes]], signatures: list[bytes]
) -> list[tuple[bytes, bytes]]:
    headers = [] if content_type is None else [(b"content-type", content_type)]
    headers += [(name, value) for name, value in extra if name != b"x-signature"]
    headers += [(b"x-signature", value) for value in signatures]
    return headers


@given(
    body=bodies,
    legacy_path=st.booleans(),
    in_body_only=st.booleans(),
    spelling=st.sampled_from(["hex", "upper", "padded"]),
    content_type=content_types,
    extra=extra_headers,
)
@FUZZ
@_known(b'"id":"it_w204517_1764412210.77"', b'"id":"it\\u0000w"')  # NUL in the ids (PostgreSQL)
@_known(b'"Giulia Rossi"', b'"Giulia\\u0000Rossi"')  # NUL deep in data
@_known(b'"type":"call:completed"', b'"type":"call:' + b"x" * 100 + b'"')  # type > 100 chars
@_known(b'"id":"it_w204517_1764412210.77"', b'"id":"' + b"x" * 256 + b'"')  # id > 255 chars
@_known(b'"time":1764412755302', b'"time":' + b"9" * 30)  # time past 64 bits
@_known(fixture("call_completed"), b"[" * 5000 + b"]" * 5000)  # nested too deeply, whole body
def test_signed_hostile_bodies_are_answered_as_documented_and_never_stored_when_refused(
    relay: ThreadedRelay,
    body: bytes,
    legacy_path: bool,
    in_body_only: bool,
    spelling: str,
    content_type: bytes | None,
    extra: list[tuple[bytes, bytes]],
) -> None:
    """A correct signature over a hostile body: past the signature check, into parsing and the
    store. 200 (kept byte-exact) or 400, never anything else."""
    signature = sign(body, SECRET)
    signature = {"hex": signature, "upper": signature.upper(), "padded": f" {signature} "}[spelling]
    iid = "h3p9ta" if legacy_path else "q7m2xk"
    target = b"/webhooks" if in_body_only else f"/webhooks/{iid}".encode()
    # without the id in the path, an id from the body that is not ours is a 404
    allowed = {200, 400, 404} if in_body_only else {200, 400}
    headers = _post_headers(content_type, extra, [signature.encode()])
    _check(relay, Attempt(b"POST", target, headers, body, frozenset(allowed), signed=True))
    _still_accepts(relay)


path_ids = st.one_of(
    st.sampled_from(
        ["q7m2xk", "h3p9ta", "Q7M2XK", "q7m2xk%20", "q7m2x%6b", "", "..", "%2e%2e", "unknown"]
    ),
    st.text(max_size=40).map(lambda text: quote(text, safe="")),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=1).map(
        lambda char: char * 5000
    ),
)
path_shapes = st.sampled_from(["/webhooks/{}", "/webhooks/{}/", "/webhooks/{}/extra", "/webhooks"])
queries = st.sampled_from(["", "?a=1", "?integrationId=q7m2xk", "?" + "x" * 2000])
signatures = st.lists(
    st.one_of(
        st.just(b""),
        st.binary(max_size=100).map(
            lambda raw: bytes(b for b in raw if b == 9 or 32 <= b <= 126 or b >= 128)
        ),
        st.sampled_from(
            [b"\xe9" * 64, b"0" * 64, b"g" * 64, b"a" * 20_000, b"sha256=" + b"0" * 64]
        ),
    ),
    max_size=2,
)
methods = st.sampled_from([b"POST", b"POST", b"POST", b"GET", b"PUT", b"DELETE", b"PATCH", b"HEAD"])


def _allowed_unsigned(method: bytes, path: str, body: bytes, signed: bool) -> set[int]:
    """What the endpoint's docstring promises for a request without a valid signature."""
    if method != b"POST":
        return {405}
    rest = unquote(path.removeprefix("/webhooks"), errors="surrogateescape")
    if "/" in rest.strip("/"):
        return {404}
    if len(body) > LIMIT:
        return {413}
    path_id = rest.strip("/")
    if not path_id:  # the id comes from the body: 400 without one, 404 if unknown, else 401
        return {400, 401, 404} | ({200} if signed else set())
    if path_id in INTEGRATIONS:
        return {200, 400} if signed else {401}
    return {404}


@given(
    method=methods,
    shape=path_shapes,
    path_id=path_ids,
    query=queries,
    body=st.one_of(bodies, st.sampled_from(CURRENT_SAMPLES)),
    content_type=content_types,
    extra=extra_headers,
    given_signatures=signatures,
)
@FUZZ
@example(  # a 1 MB integration id, unauthenticated, where the id is read from the body
    method=b"POST",
    shape="/webhooks",
    path_id="",
    query="",
    body=Shown(b'{"integrationId":"' + b"x" * 1_000_000 + b'"}'),
    content_type=b"application/json",
    extra=[],
    given_signatures=[],
)
@example(  # a non-ASCII signature, no secret known
    method=b"POST",
    shape="/webhooks/{}",
    path_id="q7m2xk",
    query="",
    body=CURRENT_SAMPLES[3],
    content_type=b"application/json",
    extra=[],
    given_signatures=[b"\xe9" * 64],
)
def test_unsigned_requests_of_any_shape_are_refused_as_documented(
    relay: ThreadedRelay,
    method: bytes,
    shape: str,
    path_id: str,
    query: str,
    body: bytes,
    content_type: bytes | None,
    extra: list[tuple[bytes, bytes]],
    given_signatures: list[bytes],
) -> None:
    """No valid signature (none, empty, garbage, non-ASCII, huge, several): anywhere under
    /webhooks, with any method, nothing gets past 401/404/405 — and nothing is stored."""
    path = shape.format(path_id)
    good = sign(body, SECRET).encode()
    signed = any(s.strip().lower() == good for s in given_signatures)  # garbage hit the mark
    allowed = _allowed_unsigned(method, path, body, signed)
    headers = _post_headers(content_type, extra, given_signatures)
    _check(relay, Attempt(method, (path + query).encode(), headers, body, frozenset(allowed)))
    _still_accepts(relay)


@pytest.mark.parametrize("size", [LIMIT + 1, 2 * LIMIT, 3 * LIMIT])
@pytest.mark.parametrize("signed", [True, False])
def test_bodies_over_the_limit_get_a_clean_413_every_time(
    relay: ThreadedRelay, size: int, signed: bool
) -> None:
    """Sent whole by a client that reads only afterwards, as Wildix does: a complete 413, never a
    reset, however much of the body relay chose not to read."""
    body = b'{"pad": "' + b"x" * (size - 11) + b'"}'
    headers = [(b"content-type", b"application/json")]
    if signed:
        headers.append((b"x-signature", sign(body, SECRET).encode()))
    for _ in range(5):  # the reset was intermittent: try it several times
        attempt = Attempt(b"POST", b"/webhooks/q7m2xk", headers, body, frozenset({413}))
        reply = _check(relay, attempt)
        assert b"larger than" in reply.body
    _still_accepts(relay)
