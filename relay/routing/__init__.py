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

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from msgspec import inspect as mi

from relay.routing.route_fields import (
    ANY,
    FUTURE,
    OPERATORS,
    ROOTS,
    RouteError,
    Scalar,
    WhereError,
    check_glob,
    check_type_name,
    event_matches,
    fits,
    fits_prefix,
    unknown,
    view_field,
    views_for,
    wanted_types,
)
from relay.wildix import Event

__all__ = [
    "FUTURE",
    "ROOTS",
    "Route",
    "RouteError",
    "WhereError",
    "check_route",
    "check_where",
    "event_matches",
    "match",
    "where_matches",
]


Predicate = Callable[[Any], bool]


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
        check_glob(f"events[{i}]", glob)
    check_where(where, events)


def check_where(where: dict[str, Any] | None, events: Sequence[str] = ("*",)) -> None:
    """``where`` against the views that the event types ``events`` matches carry."""
    _compile(where, views_for(events))
    if where and "type" in where:
        for path, name in wanted_types(where["type"]):
            check_type_name(path, name, events)


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
        field = ANY if views is None else view_field(key, path, views)
        compiled.append((path, _condition(key, value, field)))
    return compiled


def _path(key: Any) -> tuple[str, ...]:
    if not isinstance(key, str) or not key:
        raise WhereError("where", f"key {key!r} must be a non-empty dotted path")
    parts = tuple(key.split("."))
    if "" in parts:
        raise WhereError(f"where.{key}", "empty path segment")
    if parts[0] not in ROOTS:
        raise WhereError(f"where.{key}", unknown(parts[0], "", ROOTS))
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
        fits(where, key, field, value)
        return lambda actual: _equals(actual, value)
    raise WhereError(where, "expected a scalar, a list or an operator mapping")


def _operator(key: str, op: Any, arg: Any, field: mi.Type) -> Predicate:
    where = f"where.{key}.{op}"
    if op == "eq":
        if not _is_scalar(arg):
            raise WhereError(where, f"expected a scalar, got {_kind(arg)}")
        fits(where, key, field, arg)
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
        fits(where, key, field, arg)
        return lambda actual: not _equals(actual, arg)
    if op == "prefix":
        if not isinstance(arg, str):
            raise WhereError(where, f"expected a string, got {_kind(arg)}")
        fits_prefix(where, key, field, arg)
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
        fits(f"{where}[{i}]", key, field, option)
    return value


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    return "a list" if isinstance(value, list) else type(value).__name__


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
