"""Structured logs: one JSON object per line, carrying event/delivery/connector ids as fields.

Phone numbers are masked in every text of a line (message, fields and tracebacks alike) unless
``logging.show_numbers`` is set: logs travel further than the database (shippers, tickets).
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


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v) for v in value]
    return value


class JsonLines(logging.Formatter):
    """``{"time", "level", "logger", "message", **extra}``, encoded by msgspec (logging sits on
    the ingest and dispatch hot paths). Numbers are masked in text values only: a JSON number is
    an id or a duration, never a phone number, and masking it would garble large event ids."""

    def __init__(self, *, show_numbers: bool = False) -> None:
        super().__init__()
        self._encoder = msgspec.json.Encoder(enc_hook=str)
        self._mask: Callable[[Any], Any] = (lambda value: value) if show_numbers else _masked
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
            if key not in _STANDARD:
                line[key] = self._mask(value)
        if record.exc_info:
            line["exc_info"] = self._mask(self.formatException(record.exc_info))
        if record.stack_info:
            line["stack_info"] = self._mask(self.formatStack(record.stack_info))
        return self._encoder.encode(line).decode()


class MaskNumbers(logging.Formatter):
    """Wraps the text formatter and masks phone numbers in what it produces."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return mask(self.inner.format(record))


def configure(
    level: str = "INFO",
    fmt: str = "json",
    *,
    show_numbers: bool = False,
    stream: IO[str] | None = None,
) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonLines(show_numbers=show_numbers)
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        if not show_numbers:
            formatter = MaskNumbers(formatter)
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
