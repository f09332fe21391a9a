"""Structured logs: one JSON object per line, carrying event/delivery/connector ids as fields.

Every text of a line (message with its args, extra fields and tracebacks alike) is scrubbed
before it is written: configured secrets and credentials go through the redactor the caller
passes (relay.secrets.Redactor, over the settings' secrets), and phone numbers are masked
unless ``logging.show_numbers`` is set. Logs travel further than the database (shippers,
tickets), and a target's error body can echo the API key relay sent it.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import IO, Any

import msgspec

from relay.wildix.numbers import mask

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}

# uvicorn's copy of its message with ANSI colour escapes: noise in a log file or a shipper
_DROPPED = frozenset({"color_message"})

Scrub = Callable[[str], str]


def _unchanged(text: str) -> str:
    return text


def scrubber(redact: Scrub | None = None, *, show_numbers: bool = False) -> Scrub:
    """One function for every text of a line: secrets first (a number inside a token must not
    be masked into something the redactor no longer recognises), then phone numbers."""
    redact = redact or _unchanged
    if show_numbers:
        return redact
    return lambda text: mask(redact(text))


def _scrubbed(value: Any, scrub: Scrub) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrubbed(v, scrub) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrubbed(v, scrub) for v in value]
    if isinstance(value, BaseException):  # an exception passed as a field renders as its text
        return scrub(str(value))
    return value


class JsonLines(logging.Formatter):
    """``{"time", "level", "logger", "message", **extra}``, encoded by msgspec (logging sits on
    the ingest and dispatch hot paths). Only text values are scrubbed: a JSON number is an id or
    a duration, never a phone number or a secret, and masking it would garble large event ids."""

    def __init__(self, *, show_numbers: bool = False, redact: Scrub | None = None) -> None:
        super().__init__()
        self._encoder = msgspec.json.Encoder(enc_hook=str)
        scrub = scrubber(redact, show_numbers=show_numbers)
        self._mask: Callable[[Any], Any] = lambda value: _scrubbed(value, scrub)
        self._second = -1
        self._prefix = ""

    def _time(self, created: float) -> str:
        """ISO 8601 UTC with milliseconds; the part up to the second is reused within a second."""
        second = int(created)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": self._mask(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in _DROPPED:
                line[key] = self._mask(value)
        if record.exc_info:
            line["exc_info"] = self._mask(self.formatException(record.exc_info))
        if record.stack_info:
            line["stack_info"] = self._mask(self.formatStack(record.stack_info))
        return self._encoder.encode(line).decode()


class TextLines(logging.Formatter):
    """``time level logger: message key=value …``: the fields of ``extra=`` follow the message
    (as JSON values), and the whole line is scrubbed, tracebacks included."""

    def __init__(self, scrub: Scrub) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self.scrub = scrub
        self._encode = msgspec.json.Encoder(enc_hook=str).encode

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = [
            f"{key}={self._encode(value).decode()}"
            for key, value in record.__dict__.items()
            if key not in _STANDARD and key not in _DROPPED
        ]
        return f"{line} {' '.join(fields)}" if fields else line

    def format(self, record: logging.LogRecord) -> str:
        return self.scrub(super().format(record))


def configure(
    level: str = "INFO",
    fmt: str = "json",
    *,
    show_numbers: bool = False,
    redact: Scrub | None = None,
    stream: IO[str] | None = None,
) -> None:
    """Log to ``stream`` (stderr); ``redact`` scrubs secrets from every line (see above)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonLines(show_numbers=show_numbers, redact=redact)
    else:
        formatter = TextLines(scrubber(redact, show_numbers=show_numbers))
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO, and URLs can carry secrets (Slack webhooks, tokens).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    # botocore's DEBUG output carries request signatures and whole message bodies.
    for name in ("botocore", "aiobotocore", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
