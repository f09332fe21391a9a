"""The link check every message connector shares (relay.messages.safe_url) and the recording
URLs a template sees. The full-path injection tests are in tests/test_slack.py and
tests/test_email.py (the hostile event: tests/support/hostile.py)."""

from __future__ import annotations

import pytest

from relay.messages import safe_url, template_values
from relay.wildix import parse
from tests.support.hostile import hostile_event


def test_every_recording_url_a_template_sees_is_safe_legs_included() -> None:
    call = template_values(parse(hostile_event()))["call"]
    legs = [r["url"] for leg in call["legs"] for r in leg["recordings"]]
    expected = [None, None, "https://rec.example/good.wav"]
    assert [r["url"] for r in call["recordings"]] == expected and legs == expected


@pytest.mark.parametrize(
    ("url", "strict", "with_http"),
    [
        ("https://rec.example/a.wav?x=1&y=2", True, True),
        ("HTTPS://REC.EXAMPLE/a.wav", True, True),
        ("http://rec.example/a.wav", False, True),
        ("javascript:alert(1)", False, False),
        ("JavaScript://rec.example/%0aalert(1)", False, False),
        ("data:text/html,<script>alert(1)</script>", False, False),
        ("vbscript:msgbox(1)", False, False),
        ("//rec.example/a.wav", False, False),
        ("/recordings/a.wav", False, False),
        ("https:///a.wav", False, False),
        ("https://rec.example/a b.wav", False, False),
        ("https://rec.example/\na.wav", False, False),
        ("https://rec.example/\u2028a.wav", False, False),
        ("https://rec.example/é.wav", True, True),
        ("https://[::1/a.wav", False, False),
        ("", False, False),
    ],
)
def test_safe_url_allows_https_and_opted_in_http_only(
    url: str, strict: bool, with_http: bool
) -> None:
    assert (safe_url(url) == url) is strict and (safe_url(url) is None) is not strict
    assert (safe_url(url, allow_http=True) == url) is with_http
