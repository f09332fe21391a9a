"""Structured logs: one JSON object per line, carrying event/delivery/connector ids as fields.

Phone numbers are masked in the finished line (message, fields and tracebacks alike) unless
``logging.show_numbers`` is set: logs travel further than the database (shippers, tickets).
"""

from __future__ import annotations

import logging
import sys
from typing import IO

from pythonjsonlogger.json import JsonFormatter

from relay.numbers import mask


class MaskNumbers(logging.Formatter):
    """Wraps a formatter and masks phone numbers in what it produces."""

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
        formatter = JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            timestamp=False,
        )
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    handler.setFormatter(formatter if show_numbers else MaskNumbers(formatter))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request URL at INFO, and URLs can carry secrets (Slack webhooks, tokens).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    # botocore's DEBUG output carries request signatures and whole message bodies.
    for name in ("botocore", "aiobotocore", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
