"""What strangers wrote, made safe to show: event values come from callers (a caller-ID name is
theirs to choose), so before a chat connector shows one it loses whatever would make it a link, a
mention, a list or markup. Slack-style escaping (``chat_text``, ``chat_plain``, ``chat_link``),
Adaptive Card (Teams) escaping (``teams_text``, ``teams_link``) and the link check (``safe_url``),
each also a template filter."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import jinja2

from relay.templates import add_filter

# U+2060 WORD JOINER: invisible, and no parser sees "@channel" or "https://" through it.
_JOIN = "\u2060"
_MENTION = re.compile(r"@(?=(?:channel|here|everyone)\b)", re.IGNORECASE)
_SCHEME = re.compile(r"(?<=[A-Za-z0-9]):(?=//)")
# Slack has no escape for its emphasis marks: a stray one is swapped for a look-alike.
_EMPHASIS = str.maketrans({"*": "\u2217", "~": "\u223c", "`": "\u02cb"})
_LONE_UNDERSCORE = re.compile(r"(?<!\w)_|_(?!\w)")  # `_italic_`; snake_case ids stay as they are


def _one_line(value: Any) -> str:
    """A value as text on one line: a newline in a name must not start a forged line."""
    return " ".join(("" if value is None else str(value)).split())


def _unlinked(text: str) -> str:
    """``@channel``/``@here``/``@everyone`` and bare ``scheme://`` URLs broken: no ping, no link
    (``verbatim: true`` keeps Slack from linking bare domains in blocks)."""
    text = _MENTION.sub("@" + _JOIN, text)
    return _SCHEME.sub(":" + _JOIN, text)


def chat_plain(value: Any) -> str:
    """A value for a ``plain_text`` field: no markup is parsed there, yet clients still linkify
    URLs, and a later switch of the field to mrkdwn must not make ``<!channel>`` ping."""
    return _unlinked(_one_line(value)).replace("<", "<" + _JOIN)


def chat_text(value: Any) -> str:
    """A value for Slack mrkdwn (and the top-level ``text``): ``& < >`` escaped as Slack asks, so
    ``<!channel>``, ``<@U…>`` and ``<url|label>`` show as typed; typed mentions and bare URLs
    broken (``_unlinked``); emphasis marks swapped for look-alikes."""
    text = _one_line(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _LONE_UNDERSCORE.sub("\u02cd", _unlinked(text).translate(_EMPHASIS))


def safe_url(value: Any, allow_http: bool = False) -> str | None:
    """``value`` if it may become a link: an absolute ``https:`` URL (``http:`` when the operator
    allows it) with a host and no spaces or control characters; None for anything else
    (``javascript:``, ``data:``, relative or malformed URLs)."""
    if (
        not isinstance(value, str)
        or not value
        or any(c.isspace() or not c.isprintable() for c in value)
    ):
        return None
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        return None
    schemes = ("https", "http") if allow_http else ("https",)
    return value if parts.scheme.lower() in schemes and host else None


@jinja2.pass_context
def _safe_url_filter(context: jinja2.runtime.Context, value: Any) -> str:
    """``{{ url | safe_url }}``: the URL, or empty when it must not be a link."""
    return safe_url(value, bool(context.get("allow_http_links"))) or ""


@jinja2.pass_context
def chat_link(context: jinja2.runtime.Context, url: Any, label: Any = None) -> str:
    """``{{ r.url | chat_link(r.file_name) }}``: ``<url|label>`` for a safe URL, else the label
    (or nothing) as escaped text, never a link."""
    checked = safe_url(url, bool(context.get("allow_http_links")))
    shown = chat_text(label) if label not in (None, "") else ""
    if checked is None:
        return shown
    target = checked.replace("&", "&amp;").replace("<", "%3C").replace(">", "%3E")
    target = target.replace("|", "%7C")
    return f"<{target}|{shown}>" if shown else f"<{target}>"


def checked_links(call: dict[str, Any], allow_http: bool) -> dict[str, Any]:
    """A call (or leg) view, copied, with every recording URL that must not be a link set to
    none: the call's recordings and each leg's."""
    out = dict(call)
    if isinstance(call.get("recordings"), list):
        out["recordings"] = [
            {**r, "url": safe_url(r.get("url"), allow_http)} if isinstance(r, dict) else r
            for r in call["recordings"]
        ]
    if isinstance(call.get("legs"), list):
        out["legs"] = [
            checked_links(leg, allow_http) if isinstance(leg, dict) else leg for leg in call["legs"]
        ]
    return out


# Adaptive Card TextBlock / Fact markdown (a CommonMark subset: ** _ lists [label](url)), plus
# what Teams itself adds: <at>…</at> mentions, autolinked URLs and {{DATE(…)}} functions.
_WWW = re.compile(r"(?<![\w.])(www)\.", re.IGNORECASE)
_BLOCK_START = re.compile(r"(?:[-+>#]|\d+[.)])(?:\s|$)")  # a list item or quote, were it alone
_BRACKETS = str.maketrans({"[": "\uff3b", "]": "\uff3d"})


def teams_text(value: Any) -> str:
    """A value for Adaptive Card markdown (TextBlock ``text``, Fact ``title``/``value``): ``](``
    and ``]:`` broken so no ``[label](url)`` or reference link forms, ``<`` so no ``<at>``
    mention or ``<url>`` autolink, ``{{`` so no ``{{DATE()}}`` function, ``://`` and ``www.`` so
    nothing autolinks, typed ``@channel`` inert; emphasis marks swapped as in ``chat_text``, and
    a leading list or quote marker made plain. All with the invisible U+2060."""
    text = _unlinked(_one_line(value)).replace("<", "<" + _JOIN).replace("]", "]" + _JOIN)
    text = _WWW.sub("\\1" + _JOIN + ".", text.replace("{{", "{" + _JOIN + "{"))
    text = _LONE_UNDERSCORE.sub("\u02cd", text.translate(_EMPHASIS))
    return _JOIN + text if _BLOCK_START.match(text) else text


@jinja2.pass_context
def teams_link(context: jinja2.runtime.Context, url: Any, label: Any = None) -> str:
    """``{{ r.url | teams_link(r.file_name) }}``: ``[label](url)`` for a URL ``safe_url`` accepts,
    else the label (or nothing) as escaped text, never a link."""
    checked = safe_url(url, bool(context.get("allow_http_links")))
    shown = teams_text(label).translate(_BRACKETS) if label not in (None, "") else ""
    if checked is None:
        return shown
    target = checked.replace("(", "%28").replace(")", "%29").replace("<", "%3C")
    return f"[{shown or 'link'}]({target.replace('>', '%3E')})"


add_filter("chat_text", chat_text)
add_filter("mrkdwn", chat_text)  # the name Slack templates have always used
add_filter("chat_plain", chat_plain)
add_filter("chat_link", chat_link)
add_filter("safe_url", _safe_url_filter)
add_filter("teams_text", teams_text)
add_filter("teams_link", teams_link)
