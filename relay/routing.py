"""Which connectors get an event: a glob on its type, then a declarative ``where`` filter.

``where`` is written by admins in config.yaml, so it is data, never code: it is validated at
config load (``check_route``) and evaluated without eval(). Grammar, keys ANDed::

    where:
      call.direction: inbound                  # scalar: equality
      call.status: [missed, busy]              # list: any of
      call.remote_number: {prefix: "+44"}      # operators: eq, in, not, prefix, exists
      call.local.email: {exists: true}

A key is a dotted path into ``Event.view()`` (a numeric segment indexes a list); a missing
path reads as None. When the value found is a list (``call.tags``), eq/in/not/prefix test its
elements, so ``call.tags: External`` means "tagged External".

A route that can never match drops deliveries without a word, so ``check_route`` refuses at
config load what the views say cannot match: a path that is no field of the view (read from the
view structs themselves), a value outside a field's enum or of the wrong type, a view the route's
event types never carry, a broken glob, and a glob no known Wildix event type matches (unless it
ends in ``?future``: meant for types Wildix has not shipped yet).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Sequence
from fnmatch import fnmatchcase
from typing import Any, Protocol, TypeVar

from msgspec import inspect as mi

from relay.wildix import Event
from relay.wildix.views import EVENT_TYPES, VIEW_PREFIXES, VIEWS

__all__ = [
    "FUTURE",
    "Route",
    "RouteError",
    "WhereError",
    "check_route",
    "check_where",
    "event_matches",
    "match",
    "where_matches",
]

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
Predicate = Callable[[Any], bool]


class RouteError(ValueError):
    """A route that is invalid or can never match; ``path`` is relative to the route."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class WhereError(RouteError):
    """Invalid `where` filter; the path names the offending key."""


class Route(Protocol):
    """What config hands us; read-only so frozen structs qualify."""

    @property
    def connector(self) -> str: ...

    @property
    def events(self) -> Sequence[str]: ...

    @property
    def where(self) -> dict[str, Any] | None: ...


R = TypeVar("R", bound=Route)


def check_route(events: Sequence[str], where: dict[str, Any] | None) -> None:
    """Config-time validation, so a typo fails at startup instead of silently matching nothing."""
    for i, glob in enumerate(events):
        _check_glob(f"events[{i}]", glob)
    check_where(where, events)


def check_where(where: dict[str, Any] | None, events: Sequence[str] = ("*",)) -> None:
    """``where`` against the views that the event types ``events`` matches carry."""
    _compile(where, _views_for(events))
    if where and "type" in where:
        for path, name in _wanted_types(where["type"]):
            _check_type_name(path, name, events)


def event_matches(patterns: Sequence[str], event_type: str) -> bool:
    """Case-sensitive globs; ``*`` crosses ``:`` so ``call:*`` covers ``call:live:progress``."""
    if isinstance(patterns, str):  # a bare string would otherwise match per character
        patterns = [patterns]
    return any(fnmatchcase(event_type, p.removesuffix(FUTURE)) for p in patterns)


def where_matches(where: dict[str, Any] | None, view: dict[str, Any]) -> bool:
    return all(pred(_resolve(view, path)) for path, pred in _compile(where))


def match(routes: Sequence[R], event: Event) -> list[R]:
    """Routes whose events and where both match, in config order (which is delivery order)."""
    view: dict[str, Any] | None = None
    selected: list[R] = []
    for route in routes:
        if not event_matches(route.events, event.type):
            continue
        if route.where:
            if view is None:  # built lazily: most events are settled by the type glob
                view = event.view()
            if not where_matches(route.where, view):
                continue
        selected.append(route)
    return selected


def targets(routes: Sequence[Route], event: Event) -> list[str]:
    """The connectors that get a delivery of ``event``: each once, in delivery order."""
    return list(dict.fromkeys(route.connector for route in match(routes, event)))


# -- compilation ------------------------------------------------------------------------------

_ANY = mi.AnyType()


def _compile(
    where: Any, views: frozenset[str] | None = None
) -> list[tuple[tuple[str, ...], Predicate]]:
    """Predicates for ``where``; with ``views`` (config time) every path and value is checked
    against the fields of the views the route's events carry."""
    if where is None:
        return []
    if not isinstance(where, dict):
        raise WhereError("where", f"must be a mapping of path: condition, got {_kind(where)}")
    compiled = []
    for key, value in where.items():
        path = _path(key)
        field = _ANY if views is None else _field(key, path, views)
        compiled.append((path, _condition(key, value, field)))
    return compiled


def _path(key: Any) -> tuple[str, ...]:
    if not isinstance(key, str) or not key:
        raise WhereError("where", f"key {key!r} must be a non-empty dotted path")
    parts = tuple(key.split("."))
    if "" in parts:
        raise WhereError(f"where.{key}", "empty path segment")
    if parts[0] not in ROOTS:
        raise WhereError(f"where.{key}", _unknown(parts[0], "", ROOTS))
    return parts


def _condition(key: str, value: Any, field: mi.Type) -> Predicate:
    where = f"where.{key}"
    if isinstance(value, dict):
        if not value:
            raise WhereError(where, "empty operator mapping")
        preds = [_operator(key, op, arg, field) for op, arg in value.items()]
        return lambda actual: all(p(actual) for p in preds)
    if isinstance(value, list):
        options = _scalars(where, value, key, field)
        return lambda actual: _any_of(actual, options)
    if _is_scalar(value):
        _fits(where, key, field, value)
        return lambda actual: _equals(actual, value)
    raise WhereError(where, "expected a scalar, a list or an operator mapping")


def _operator(key: str, op: Any, arg: Any, field: mi.Type) -> Predicate:
    where = f"where.{key}.{op}"
    if op == "eq":
        if not _is_scalar(arg):
            raise WhereError(where, f"expected a scalar, got {_kind(arg)}")
        _fits(where, key, field, arg)
        return lambda actual: _equals(actual, arg)
    if op == "in":
        options = _scalars(where, arg, key, field)
        return lambda actual: _any_of(actual, options)
    if op == "not":
        if isinstance(arg, list):
            options = _scalars(where, arg, key, field)
            return lambda actual: not _any_of(actual, options)
        if not _is_scalar(arg):
            raise WhereError(where, f"expected a scalar or a list, got {_kind(arg)}")
        _fits(where, key, field, arg)
        return lambda actual: not _equals(actual, arg)
    if op == "prefix":
        if not isinstance(arg, str):
            raise WhereError(where, f"expected a string, got {_kind(arg)}")
        _fits_prefix(where, key, field, arg)
        return lambda actual: any(isinstance(v, str) and v.startswith(arg) for v in _each(actual))
    if op == "exists":
        if not isinstance(arg, bool):
            raise WhereError(where, f"expected true or false, got {_kind(arg)}")
        return lambda actual: (actual is not None) is arg
    raise WhereError(where, f"unknown operator (use one of {', '.join(OPERATORS)})")


def _scalars(where: str, value: Any, key: str, field: mi.Type) -> list[Scalar]:
    """A list of options, "any of"; each one is checked like a scalar, at its index."""
    if not isinstance(value, list):
        raise WhereError(where, f"expected a list, got {_kind(value)}")
    if not all(_is_scalar(v) for v in value):
        raise WhereError(where, "list items must be scalars")
    for i, option in enumerate(value):
        _fits(f"{where}[{i}]", key, field, option)
    return value


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    return "a list" if isinstance(value, list) else type(value).__name__


# -- what the views hold (config time) ----------------------------------------------------------


def _views_for(globs: Iterable[str]) -> frozenset[str]:
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


def _field(key: str, path: tuple[str, ...], views: frozenset[str]) -> mi.Type:
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
                raise WhereError(f"where.{key}", _unknown(segment, scope, fields))
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
        return types[0] if len(types) == 1 else _ANY
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


def _fits(where: str, key: str, field: mi.Type, value: Scalar) -> None:
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


def _fits_prefix(where: str, key: str, field: mi.Type, prefix: str) -> None:
    info = _present(field)
    if isinstance(info, mi.ListType):
        info = _present(info.item_type)
    if isinstance(info, mi.LiteralType):
        if not any(str(v).startswith(prefix) for v in info.values):
            raise WhereError(where, f"no value of {key} starts with {prefix!r} ({_holds(info)})")
    elif not isinstance(info, mi.AnyType | mi.StrType | mi.DateTimeType):
        raise WhereError(where, f"{key} holds {_holds(info)}, not text")


def _unknown(name: str, scope: str, known: Iterable[str]) -> str:
    """``unknown field 'stauts' for call events: did you mean 'status'? (known: …)``."""
    return f"unknown field {name!r}{scope and ' ' + scope}{_suggest(name, known)}"


def _suggest(name: Any, known: Iterable[Any]) -> str:
    names = sorted(map(str, known))
    close = difflib.get_close_matches(str(name), names, n=1)
    hint = f": did you mean {close[0]!r}?" if close else ""
    return f"{hint} (known: {', '.join(names)})"


# -- event type globs (config time) ---------------------------------------------------------


def _family_globs() -> list[str]:
    """``call:*``, ``call:live:*``…: what a typo in a family glob is compared with."""
    prefixes = {t[: i + 1] for t in EVENT_TYPES for i, c in enumerate(t) if c == ":"}
    return sorted(p + "*" for p in prefixes)


def _check_glob(where: str, glob: str) -> None:
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


def _wanted_types(condition: Any) -> list[tuple[str, Any]]:
    """The event types a ``type`` condition asks for by equality (``not``/``prefix`` ask none)."""
    if isinstance(condition, list):
        return [(f"where.type[{i}]", v) for i, v in enumerate(condition)]
    if not isinstance(condition, dict):
        return [("where.type", condition)]
    wanted = [("where.type.eq", condition["eq"])] if "eq" in condition else []
    return wanted + [(f"where.type.in[{i}]", v) for i, v in enumerate(condition.get("in", []))]


def _check_type_name(where: str, name: Any, events: Sequence[str]) -> None:
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


# -- evaluation -------------------------------------------------------------------------------


def _resolve(view: Any, path: tuple[str, ...]) -> Any:
    current = view
    for segment in path:
        if isinstance(current, dict):
            current = current.get(segment)
        elif isinstance(current, list) and segment.isascii() and segment.isdigit():
            index = int(segment)
            current = current[index] if index < len(current) else None
        else:
            return None
    return current


def _each(actual: Any) -> list[Any]:
    return actual if isinstance(actual, list) else [actual]


def _same(actual: Any, expected: Scalar) -> bool:
    """Type-aware equality: True is not 1, "16" is not 16; ints and floats compare numerically."""
    if isinstance(actual, bool) or isinstance(expected, bool):
        return type(actual) is type(expected) and actual == expected
    numbers = int | float
    if isinstance(actual, numbers) and isinstance(expected, numbers):
        return actual == expected
    return type(actual) is type(expected) and actual == expected


def _equals(actual: Any, expected: Scalar) -> bool:
    if expected is None:
        return actual is None
    return any(_same(v, expected) for v in _each(actual))


def _any_of(actual: Any, options: list[Scalar]) -> bool:
    return any(_equals(actual, option) for option in options)
