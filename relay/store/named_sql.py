"""Named SQL: the store's hot statements live in ``relay/store/sql/<topic>.<database>.sql``.

Written out whole, each with the comment that says what it does and why it is shaped so, they
read (and diff, and paste into ``EXPLAIN``) as the SQL the database runs. A query starts at a
comment line ``-- name: what it does`` at the top of a paragraph, and runs to the next one; its
other comment lines are dropped, and so is its final ``;``. Delivery states are written
``{state:pending}`` (one quoted state) or ``{states:active}`` (the quoted states of
``relay.store.states.ACTIVE``/``ENDED``) and spelled from ``DeliveryState`` at load time; event
types that coalescing compares are written ``{types:final}`` (``COALESCE_TYPES``). Any
other ``{…}`` is left for the backend to fill in (e.g. a multi-row ``VALUES``). Each file is
read and parsed once, when a backend module is imported.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from relay.store.states import ACTIVE, COALESCE_TYPES, ENDED, DeliveryState

__all__ = ["available", "parse", "queries"]

_HEADER = re.compile(r"-- ([a-z_][a-z0-9_]*): \S")
_STATES = re.compile(r"\{(state|states|types):([a-z_]+)\}")
_GROUPS: dict[str, tuple[DeliveryState, ...]] = {"active": ACTIVE, "ended": ENDED}


def _quoted(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{value}'" for value in values)


def _spell(match: re.Match[str]) -> str:
    kind, name = match.groups()
    if kind == "state":
        return _quoted((DeliveryState(name).value,))
    if kind == "types":
        return _quoted(COALESCE_TYPES[name])
    return _quoted(tuple(state.value for state in _GROUPS[name]))


def parse(text: str, source: str = "<sql>") -> dict[str, str]:
    """Named queries of one file's text, in file order."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    previous = ""
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line) if not previous.strip() else None
        previous = line
        if header is not None:
            name = header.group(1)
            if name in found:
                raise ValueError(f"{source}:{number}: query {name!r} is named twice")
            current = found[name] = []
        elif line.lstrip().startswith("--") or current is None:
            continue  # comments, and the file's own introduction
        elif line.strip():
            current.append(line.rstrip())
    out: dict[str, str] = {}
    for name, lines in found.items():
        sql = "\n".join(lines).strip().removesuffix(";").strip()
        if not sql:
            raise ValueError(f"{source}: query {name!r} has no SQL")
        try:
            out[name] = _STATES.sub(_spell, sql)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{source}: query {name!r} names an unknown state: {exc}") from None
    return out


def available() -> list[str]:
    """Every ``<topic>.<database>`` file the package carries."""
    folder = resources.files("relay.store") / "sql"
    return sorted(
        entry.name.removesuffix(".sql") for entry in folder.iterdir() if entry.name.endswith(".sql")
    )


@cache
def queries(name: str) -> dict[str, str]:
    """The named queries of ``sql/<name>.sql``, e.g. ``queries("queue.postgresql")``."""
    resource = resources.files("relay.store") / "sql" / f"{name}.sql"
    return parse(resource.read_text(encoding="utf-8"), f"relay/store/sql/{name}.sql")
