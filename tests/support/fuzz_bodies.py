"""Hostile Wildix bodies for the fuzz suites: hypothesis strategies that build what an attacker
(or a broken sender) can put in a body — deep nesting, numbers past 64 bits, NUL, lone
surrogates, bytes that are not UTF-8, over-long ids and types, duplicate keys — both as whole
bodies and spliced into the shipped samples, so the envelope around them stays valid."""

from __future__ import annotations

import json
import random
from typing import Any

import msgspec
from hypothesis import strategies as st

from tests.support.samples import CURRENT, LEGACY, fixture

CURRENT_SAMPLES = [fixture(name) for name in CURRENT]
LEGACY_SAMPLES = [fixture(name) for name in LEGACY]  # integration h3p9ta
_SLOT = "\u0001hostile\u0001"  # where a fragment is spliced in (json.dumps escapes it)
_SLOT_JSON = json.dumps(_SLOT).encode()


class Shown(bytes):
    """Bytes whose repr stays short: a failing example of 1 MB prints as its start and size."""

    def __repr__(self) -> str:
        if len(self) <= 200:
            return super().__repr__()
        return f"Shown({bytes(self[:80])!r} + ... + {bytes(self[-40:])!r}, {len(self)} bytes)"


def _nested(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def _string(text: str) -> bytes:
    return json.dumps(text).encode()


# JSON value fragments as raw bytes: some are valid JSON, some only look like it.
fragments: st.SearchStrategy[bytes] = st.one_of(
    st.builds(_nested, st.sampled_from([2, 64, 500, 1000, 1100, 5000, 20000]), st.just("array")),
    st.builds(_nested, st.sampled_from([500, 1100, 5000]), st.just("object")),
    st.sampled_from(
        [
            b"18446744073709551616",  # 2**64
            b"-9223372036854775809",  # -2**63 - 1
            b"1" + b"0" * 400,
            b"-" + b"9" * 5000,
            b"1e400",
            b"-1e400",
            b"1.5e-400",
            b"123456789012345678901234567890.5",
            b"NaN",
            b"Infinity",
            b'"\\u0000"',
            b'"a\\u0000b"',
            b'"\\ud800"',  # a lone surrogate, escaped
            b'"\\udfff\\ud800"',
            b'"\xff\xfe"',  # not UTF-8
            b'"\xc3"',  # a truncated sequence
            b'"\xc0\xaf"',  # an overlong encoding
            b'"\xed\xa0\x80"',  # a surrogate, encoded
            b'"\x00"',  # a raw NUL inside a string
            b'"tab\there"',  # a raw control character inside a string
            b'{"a":1,"a":2}',
            b"true",
            b"null",
            b"{}",
            b"[]",
            b"-0",
            b'"',
            b"",
        ]
    ),
    st.builds(_string, st.text(max_size=40)),
    st.builds(
        _string,
        st.builds(
            lambda char, n: char * n,
            st.sampled_from(["x", "\u00e9", "\u0000", "\U0001f600", "<!channel>"]),
            st.sampled_from([100, 101, 255, 256, 1000, 70000]),
        ),
    ),
    st.integers(min_value=-(2**70), max_value=2**70).map(lambda n: str(n).encode()),
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key/index path in a decoded sample, the root's own keys included."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


def splice(sample: bytes, seed: int, fragment: bytes, how: str) -> bytes:
    """``sample`` with one value replaced by ``fragment``, one key dropped, or one key added."""
    doc = msgspec.json.decode(sample)
    pick = random.Random(seed)
    path = pick.choice(_paths(doc))
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if how == "drop" and isinstance(parent, dict):
        del parent[last]
        return json.dumps(doc).encode()
    if how == "add" and isinstance(parent, dict):
        parent[f"extra{seed % 7}"] = _SLOT
    else:
        parent[last] = _SLOT
    return json.dumps(doc, ensure_ascii=bool(seed % 2)).encode().replace(_SLOT_JSON, fragment, 1)


def set_key(sample: bytes, key: str, fragment: bytes) -> bytes:
    """The sample with one envelope key (``id``, ``type``…) set to ``fragment``."""
    doc = msgspec.json.decode(sample)
    doc[key] = _SLOT
    return json.dumps(doc).encode().replace(_SLOT_JSON, fragment, 1)


def duplicate_key(sample: bytes, key: str, fragment: bytes, first: bool) -> bytes:
    """The sample with ``key`` written twice: the hostile copy before or after the real one."""
    extra = _string(key) + b":" + (fragment or b"null")
    if first:
        return b"{" + extra + b"," + sample.lstrip()[1:]
    return sample.rstrip()[:-1] + b"," + extra + b"}"


def mutate_bytes(sample: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    """Byte-level edits (position, bytes removed, bytes inserted) of a valid sample."""
    body = bytearray(sample)
    for position, removed, inserted in edits:
        at = position % (len(body) + 1)
        body[at : at + removed] = inserted
    return bytes(body)


samples = st.sampled_from(CURRENT_SAMPLES + LEGACY_SAMPLES)
_envelope_keys = st.sampled_from(["id", "type", "time", "integrationId", "data", "pbx", "company"])

# Whole bodies: spliced samples first (they go deepest into the pipeline), then the rest.
bodies: st.SearchStrategy[bytes] = st.one_of(
    st.builds(
        splice,
        samples,
        st.integers(0, 2**32),
        fragments,
        st.sampled_from(["replace", "replace", "drop", "add"]),
    ),
    st.builds(set_key, samples, _envelope_keys, fragments),
    st.builds(duplicate_key, samples, _envelope_keys, fragments, st.booleans()),
    st.builds(
        mutate_bytes,
        samples,
        st.lists(
            st.tuples(st.integers(0, 10_000), st.integers(0, 8), st.binary(max_size=8)),
            min_size=1,
            max_size=4,
        ),
    ),
    fragments,
    st.binary(max_size=512),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=20,
    ).map(lambda value: json.dumps(value).encode()),
)
