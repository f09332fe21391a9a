"""A hostile Wildix event and the checks that what people read of it is inert.

A caller chooses their own caller-ID name and an event says what its recording URLs are: the
Slack and email tests post this event and assert on the exact bytes their fake received.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from tests.fakes.slack import text_objects
from tests.support.samples import fixture

__all__ = ["HOSTILE_NAME", "assert_inert", "hostile_event", "links"]

HOSTILE_NAME = "<!channel> @here <https://evil.example|Click to call back> *bold*"
RECORDINGS = {
    "script.wav": "javascript:alert(1)",
    "plain.wav": "http://rec.example/plain.wav",
    "good.wav": "https://rec.example/good.wav",
}
# `<` opening a Slack mention (<!…>, <@…>, <#…>) or link (<scheme:…>): Slack parses these.
CONTROL = re.compile(r"<(?=[!@#]|[A-Za-z][A-Za-z0-9+.-]*:)")
OURS = re.compile(r"<!date\^\d+\^\{date_short_pretty\} \{time\}\|[^<>]*>")  # slack_date's own
TYPED_MENTION = re.compile(r"@(channel|here|everyone)\b", re.IGNORECASE)
BARE_LINK = re.compile(r"https?://evil|javascript:", re.IGNORECASE)


def hostile_event(name: str = HOSTILE_NAME) -> bytes:
    """The missed-call sample, its caller renamed and with a voicemail under three URLs."""
    body = json.loads(fixture("call_completed_missed_inbound"))
    flow = body["data"]["flows"][0]
    flow["caller"]["name"] = name
    flow["recordingsData"] = [{"fileName": f, "url": u} for f, u in RECORDINGS.items()]
    return json.dumps(body).encode()


def strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value: what Slack may parse."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def links(text: str) -> list[str]:
    """The targets of the ``<url|label>`` links Slack would make of a string."""
    return re.findall(r"<([A-Za-z][A-Za-z0-9+.-]*:[^|>]*)(?:\|[^>]*)?>", OURS.sub("", text))


def assert_inert(message: dict[str, Any], allowed_links: set[str]) -> None:
    """No field holds a mention, a typed @channel, a bare evil link, or a link not allowed."""
    for text in strings(message):
        rest = OURS.sub("", text)
        for match in CONTROL.finditer(rest):
            target = rest[match.start() + 1 :].split("|")[0].split(">")[0]
            assert target in allowed_links, f"a parsed <…> in {text!r}"
        assert not TYPED_MENTION.search(text), text
        assert not BARE_LINK.search(text), text
    mrkdwn = [o for o in text_objects(message) if o["type"] == "mrkdwn"]
    for obj in mrkdwn:
        assert obj.get("verbatim") is True, obj
    for text in [message["text"], *(o["text"] for o in mrkdwn)]:
        assert "*bold*" not in text, text  # a name cannot restyle the card
