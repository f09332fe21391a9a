"""What a route may name: the fields and value types of the views ``Event.view()`` carries
(read from the view structs themselves), the Wildix event types, and the globs over them. The
config-time half of routing: ``relay.routing`` checks a route against it when config.yaml is
loaded, so a route that can never match is refused with its key path."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase
from typing import Any

from msgspec import inspect as mi

from relay.wildix import Event
from relay.wildix.views import EVENT_TYPES, VIEW_PREFIXES, VIEWS

OPERATORS = ("eq", "in", "not", "prefix", "exists")


# Ends a glob meant for event types Wildix has not shipped yet (not part of the pattern).
FUTURE = "?future"


def _root_types() -> dict[str, mi.Type]:
    """What ``Event.view()`` holds: the envelope fields (less the raw body) and the views."""
    envelope = mi.type_info(Event)
    assert isinstance(envelope, mi.StructType)
    roots = {f.encode_name: f.type for f in envelope.fields if f.name != "raw"}
    return roots | {name: mi.type_info(view) for name, view in VIEWS.items()}


ROOT_TYPES = _root_types()


ROOTS = frozenset(ROOT_TYPES)


Scalar = str | int | float | bool | None


class RouteError(ValueError):
    """A route that is invalid or can never match; ``path`` is relative to the route."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class WhereError(RouteError):
    """Invalid `where` filter; the path names the offending key."""


def event_matches(patterns: Sequence[str], event_type: str) -> bool:
    """Case-sensitive globs; ``*`` crosses ``:`` so ``call:*`` covers ``call:live:progress``."""
    if isinstance(patterns, str):  # a bare string would otherwise match per character
        patterns = [patterns]
    return any(fnmatchcase(event_type, p.removesuffix(FUTURE)) for p in patterns)


ANY = mi.AnyType()


# -- what the views hold (config time) ----------------------------------------------------------


def views_for(globs: Iterable[str]) -> frozenset[str]:
    """The views that events matched by ``globs`` can carry: those of the known types they
    match, and for a ``?future`` glob those of the type prefixes it may reach (``call:``)."""
    views: set[str] = set()
    for glob in globs:
        pattern = glob.removesuffix(FUTURE)
        views |= {v for t, v in EVENT_TYPES.items() if v and fnmatchcase(t, pattern)}
        if glob.endswith(FUTURE):
            literal = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
            views |= {
                view
                for prefix, view in VIEW_PREFIXES.items()
                if literal.startswith(prefix) or prefix.startswith(literal)
            }
    return frozenset(views)


def view_field(key: str, path: tuple[str, ...], views: frozenset[str]) -> mi.Type:
    """The type the view holds at ``path``, read from the view structs."""
    root = path[0]
    if root in VIEWS and root not in views:
        carried = ", ".join(sorted(views)) or "none"
        raise WhereError(
            f"where.{key}",
            f"this route's events never carry a {root} view, so this never matches "
            f"(views they carry: {carried}; {root}.* needs events like '{root}:*')",
        )
    info = ROOT_TYPES[root]
    for depth, segment in enumerate(path[1:], start=1):
        here = ".".join(path[:depth])
        info = _present(info)
        if isinstance(info, mi.AnyType):  # raw Wildix data: anything goes
            return info
        if isinstance(info, mi.ListType) and segment.isascii() and segment.isdigit():
            info = info.item_type
        elif isinstance(info, mi.ListType):
            raise WhereError(f"where.{key}", f"{here} is a list: index it, e.g. {here}.0.{segment}")
        elif isinstance(info, mi.StructType):
            fields = {f.encode_name: f.type for f in info.fields}
            if segment not in fields:
                scope = f"for {root} events" if depth == 1 else f"in {here}"
                raise WhereError(f"where.{key}", unknown(segment, scope, fields))
            info = fields[segment]
        else:
            raise WhereError(
                f"where.{key}", f"{here} holds {_holds(info)}: it has no field {segment!r}"
            )
    return info


def _present(info: mi.Type) -> mi.Type:
    """The type without its None (a missing value is always allowed: it reads as None)."""
    if isinstance(info, mi.UnionType):
        types = [t for t in info.types if not isinstance(t, mi.NoneType)]
        return types[0] if len(types) == 1 else ANY
    return info


def _holds(info: mi.Type) -> str:
    if isinstance(info, mi.LiteralType):
        return "one of " + ", ".join(map(str, info.values))
    if isinstance(info, mi.BoolType):
        return "true or false"
    if isinstance(info, mi.IntType | mi.FloatType):
        return "a number"
    if isinstance(info, mi.StructType):
        return "an object"
    if isinstance(info, mi.ListType):
        return "a list"
    return "text"  # strings, and datetimes (ISO-8601 text in the view)


def fits(where: str, key: str, field: mi.Type, value: Scalar) -> None:
    """Refuse a value the field can never equal: outside its enum, or of another type."""
    info = _present(field)
    if value is None or isinstance(info, mi.AnyType):
        return
    if isinstance(info, mi.ListType):  # a list matches by its elements
        info = _present(info.item_type)
        if isinstance(info, mi.StructType):
            raise WhereError(
                where, f"{key} is a list of objects: compare a field of one, e.g. {key}.0.…"
            )
    if isinstance(info, mi.StructType):
        fields = ", ".join(f.encode_name for f in info.fields)
        raise WhereError(
            where, f"{key} is an object: compare one of its fields ({fields}), or use exists"
        )
    if isinstance(info, mi.LiteralType):
        if value not in info.values or isinstance(value, bool):
            raise WhereError(
                where, f"{value!r} is not a value of {key}{_suggest(value, info.values)}"
            )
        return
    if isinstance(info, mi.BoolType):
        ok = isinstance(value, bool)
    elif isinstance(info, mi.IntType | mi.FloatType):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        given = "text" if isinstance(value, str) else _holds(mi.type_info(type(value)))
        quote = isinstance(value, int | float) and _holds(info) == "text"
        hint = f': quote it ("{value}")' if quote else ""
        raise WhereError(where, f"{value!r} is {given}, but {key} holds {_holds(info)}{hint}")


def fits_prefix(where: str, key: str, field: mi.Type, prefix: str) -> None:
    info = _present(field)
    if isinstance(info, mi.ListType):
        info = _present(info.item_type)
    if isinstance(info, mi.LiteralType):
        if not any(str(v).startswith(prefix) for v in info.values):
            raise WhereError(where, f"no value of {key} starts with {prefix!r} ({_holds(info)})")
    elif not isinstance(info, mi.AnyType | mi.StrType | mi.DateTimeType):
        raise WhereError(where, f"{key} holds {_holds(info)}, not text")


def unknown(name: str, scope: str, known: Iterable[str]) -> str:
    """``unknown field 'stauts' for call events: did you mean 'status'? (known: …)``."""
    return f"unknown field {name!r}{scope and ' ' + scope}{_suggest(name, known)}"


def _suggest(name: Any, known: Iterable[Any]) -> str:
    names = sorted(map(str, known))
    close = difflib.get_close_matches(str(name), names, n=1)
    hint = f": did you mean {close[0]!r}?" if close else ""
    return f"{hint} (known: {', '.join(names)})"


# -- event type globs (config time) -------------------------------------------------------------


def _family_globs() -> list[str]:
    """``call:*``, ``call:live:*``…: what a typo in a family glob is compared with."""
    prefixes = {t[: i + 1] for t in EVENT_TYPES for i, c in enumerate(t) if c == ":"}
    return sorted(p + "*" for p in prefixes)


def check_glob(where: str, glob: str) -> None:
    pattern = glob.removesuffix(FUTURE)
    if not pattern:
        raise RouteError(where, "empty event type pattern")
    if unclosed := _unclosed_bracket(pattern):
        raise RouteError(where, f"{glob!r} has an unclosed '[' at position {unclosed}")
    if glob.endswith(FUTURE) or any(fnmatchcase(t, pattern) for t in EVENT_TYPES):
        return
    candidates = [*EVENT_TYPES, *_family_globs()]
    close = difflib.get_close_matches(pattern, candidates, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    families = ", ".join(sorted({t.split(":")[0] + ":*" for t in EVENT_TYPES}))
    raise RouteError(
        where,
        f"{glob!r} matches no Wildix event type relay knows: {hint}(known: {families}; "
        f"for types Wildix has not shipped yet write {pattern + FUTURE!r})",
    )


def wanted_types(condition: Any) -> list[tuple[str, Any]]:
    """The event types a ``type`` condition asks for by equality (``not``/``prefix`` ask none)."""
    if isinstance(condition, list):
        return [(f"where.type[{i}]", v) for i, v in enumerate(condition)]
    if not isinstance(condition, dict):
        return [("where.type", condition)]
    wanted = [("where.type.eq", condition["eq"])] if "eq" in condition else []
    return wanted + [(f"where.type.in[{i}]", v) for i, v in enumerate(condition.get("in", []))]


def check_type_name(where: str, name: Any, events: Sequence[str]) -> None:
    """An event type the route's globs never let through, or that Wildix does not send."""
    if name is None:
        return
    future = [g for g in events if g.endswith(FUTURE)]
    known = name in EVENT_TYPES and event_matches([g for g in events if g not in future], name)
    if known or event_matches(future, name):
        return
    allowed = [t for t in EVENT_TYPES if event_matches(events, t)]
    raise WhereError(
        where,
        f"{name!r} is an event type this route never receives{_suggest(name, allowed)}",
    )


def _unclosed_bracket(pattern: str) -> int | None:
    """1-based position of a ``[`` with no ``]`` (fnmatch would read it as a plain ``[``)."""
    i, n = 0, len(pattern)
    while i < n:
        if pattern[i] == "[":
            j = i + 1
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":  # a leading ] is a member, not the end
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                return i + 1
            i = j
        i += 1
    return None
