"""Sandboxed Jinja for message templates written by admins in config.yaml."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

_ENV = ImmutableSandboxedEnvironment(
    undefined=jinja2.ChainableUndefined, autoescape=False, keep_trailing_newline=True
)
_HTML_ENV = ImmutableSandboxedEnvironment(
    undefined=jinja2.ChainableUndefined, autoescape=True, keep_trailing_newline=True
)


class TemplateError(ValueError):
    """A template that does not compile; raised at config time so it never fails a delivery."""


@lru_cache(maxsize=512)
def compile_template(source: str, html: bool = False) -> jinja2.Template:
    try:
        return (_HTML_ENV if html else _ENV).from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template error on line {exc.lineno}: {exc.message}") from None


def render(source: str, /, *, html: bool = False, **context: Any) -> str:
    return compile_template(source, html).render(**context)


def add_filter(name: str, func: Any) -> None:
    """Let plugins offer filters (e.g. a duration formatter) to every template."""
    _ENV.filters[name] = func
    _HTML_ENV.filters[name] = func
    compile_template.cache_clear()  # a template compiled before the filter existed is stale


# -- filters every template gets --------------------------------------------------------------


def to_datetime(value: Any) -> datetime | None:
    """The views' ISO strings (or datetimes, or epoch seconds) as aware UTC datetimes."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def zone(name: str | None) -> ZoneInfo | None:
    """A time zone by IANA name; ValueError names the bad value (for config validation)."""
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        hint = "use an IANA name like Europe/London"
        raise ValueError(f"unknown time zone {name!r} ({hint})") from None


@jinja2.pass_context
def _datetime_filter(
    context: jinja2.runtime.Context, value: Any, fmt: str = "%Y-%m-%d %H:%M %Z"
) -> str:
    """``{{ call.started_at | datetime }}``: in the template's ``timezone`` when it has one."""
    when = to_datetime(value)
    if when is None:
        return ""
    tz = context.get("timezone")
    try:
        local = when.astimezone(zone(tz) if isinstance(tz, str) else UTC)
    except ValueError:
        local = when
    return local.strftime(fmt)


def _epoch_filter(value: Any) -> int | None:
    when = to_datetime(value)
    return int(when.timestamp()) if when else None


def _duration_filter(seconds: Any) -> str:
    """180.6 → ``3:01``; 3725 → ``1:02:05``; nothing → empty."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return ""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


add_filter("datetime", _datetime_filter)
add_filter("epoch", _epoch_filter)
add_filter("duration", _duration_filter)
