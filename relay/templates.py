"""Sandboxed Jinja for message templates written by admins in config.yaml."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

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
