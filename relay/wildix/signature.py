"""Wildix signatures: lowercase hex HMAC-SHA256 of the exact body bytes, keyed with the secret.

There is no timestamp or prefix in the scheme, so the only things that matter are the raw bytes
(never a re-serialisation) and a constant-time comparison.
"""

from __future__ import annotations

import hashlib
import hmac

HEADER = "x-signature"
SQS_ATTRIBUTE = "X-SIGNATURE"


def sign(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, signature: str | None) -> bool:
    if not signature or not secret:
        return False
    expected = sign(body, secret)
    # As bytes: a header is whatever the client sent, and comparing str refuses non-ASCII.
    given = signature.strip().lower().encode("utf-8", "surrogateescape")
    return hmac.compare_digest(expected.encode("ascii"), given)
