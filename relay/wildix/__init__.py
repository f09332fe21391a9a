"""The Wildix format: the envelope, its normalized views, signatures, phone numbers, samples.

The lowest stage: it imports nothing else of relay's.
"""

from importlib import resources
from importlib.resources.abc import Traversable

from relay.wildix.envelope import Event, InvalidEvent, parse
from relay.wildix.views import Call, Leg, Party, Presence, Recording, Sms

__all__ = [
    "Call",
    "Event",
    "InvalidEvent",
    "Leg",
    "Party",
    "Presence",
    "Recording",
    "Sms",
    "parse",
    "samples",
]


def samples() -> Traversable:
    """The Wildix samples relay ships, one JSON body a file: the one copy that ``send-test``,
    the template checks, the docs and the tests all read."""
    return resources.files(__name__) / "samples"
