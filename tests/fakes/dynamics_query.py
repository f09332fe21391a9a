"""The OData query options of the Dataverse fake: ``$filter`` (``eq``/``ne``, ``and``/``or``/
``not``, parentheses, ``contains``/``startswith``/``endswith``), ``$select`` and ``$top``, parsed
strictly enough that a malformed or unquoted filter, or an unknown column, fails as in Dataverse.
String comparisons ignore case, as Dataverse's default collation does."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from litestar import Response

Row = dict[str, Any]
Test = Callable[[Row], bool]
TOKEN = re.compile(r"\s+|(\(|\)|,|'(?:[^']|'')*'|[A-Za-z_][A-Za-z0-9_]*|-?\d+)")
FUNCTIONS = {
    "contains": lambda field, value: value in field,
    "startswith": lambda field, value: field.startswith(value),
    "endswith": lambda field, value: field.endswith(value),
}
LITERALS = {"true": True, "false": False, "null": None}


class QueryError(ValueError):
    pass


def error(status: int, code: str, message: str) -> Response[Any]:
    """Dataverse's OData error body."""
    return Response({"error": {"code": code, "message": message}}, status_code=status)


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    while pos < len(text):
        match = TOKEN.match(text, pos)
        if match is None:
            raise QueryError(f"Syntax error at position {pos} in '{text}'.")
        if match[1] is not None:
            out.append(match[1])
        pos = match.end()
    return out


def _fold(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


class _Parser:
    def __init__(self, text: str, columns: set[str], entity: str) -> None:
        self.text, self.columns, self.entity = text, columns, entity
        self.tokens, self.at = _tokens(text), 0

    def peek(self) -> str | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise QueryError(f"Syntax error at position {self.at} in '{self.text}'.")
        self.at += 1
        return token

    def column(self) -> str:
        name = self.take()
        if name not in self.columns:
            raise QueryError(
                f"Could not find a property named '{name}' on type "
                f"'Microsoft.Dynamics.CRM.{self.entity}'."
            )
        return name

    def literal(self) -> Any:
        token = self.take()
        if token.startswith("'"):
            return token[1:-1].replace("''", "'")
        if token in LITERALS:
            return LITERALS[token]
        if re.fullmatch(r"-?\d+", token):
            return int(token)
        raise QueryError(f"Syntax error: '{token}' is not a literal, in '{self.text}'.")

    def parse(self) -> Test:
        test = self.disjunction()
        if self.peek() is not None:
            raise QueryError(f"Syntax error at position {self.at} in '{self.text}'.")
        return test

    def disjunction(self) -> Test:
        tests = [self.conjunction()]
        while self.peek() == "or":
            self.take()
            tests.append(self.conjunction())
        return lambda row: any(t(row) for t in tests)

    def conjunction(self) -> Test:
        tests = [self.factor()]
        while self.peek() == "and":
            self.take()
            tests.append(self.factor())
        return lambda row: all(t(row) for t in tests)

    def factor(self) -> Test:
        token = self.peek()
        if token == "(":
            self.take()
            inner = self.disjunction()
            self.take(")")
            return inner
        if token == "not":
            self.take()
            inner = self.factor()
            return lambda row: not inner(row)
        if token in FUNCTIONS:
            func = FUNCTIONS[self.take()]
            self.take("(")
            name = self.column()
            self.take(",")
            value = self.literal()
            self.take(")")
            if not isinstance(value, str):
                raise QueryError(f"{token} needs a string literal, in '{self.text}'.")
            return lambda row: func(str(row.get(name) or "").lower(), value.lower())
        name = self.column()
        op = self.take()
        if op not in ("eq", "ne"):
            raise QueryError(f"Syntax error: unsupported operator '{op}' in '{self.text}'.")
        value = _fold(self.literal())
        if op == "eq":
            return lambda row: _fold(row.get(name)) == value
        return lambda row: _fold(row.get(name)) != value


def query(rows: list[Row], params: dict[str, str], columns: set[str], entity: str) -> list[Row]:
    """The rows ``params`` (``$filter``, ``$select``, ``$top``) ask for; QueryError if malformed."""
    unknown = set(params) - {"$filter", "$select", "$top"}
    if unknown:
        raise QueryError(f"The query parameter '{sorted(unknown)[0]}' is not supported.")
    test: Test = (
        _Parser(params["$filter"], columns, entity).parse()
        if "$filter" in params
        else (lambda row: True)
    )
    select = [s.strip() for s in params.get("$select", "").split(",") if s.strip()]
    for name in select:
        if name not in columns:
            raise QueryError(
                f"Could not find a property named '{name}' on type "
                f"'Microsoft.Dynamics.CRM.{entity}'."
            )
    found = [row for row in rows if test(row)]
    if "$top" in params:
        if not params["$top"].isdigit():
            raise QueryError(f"Invalid value '{params['$top']}' for $top query option.")
        found = found[: int(params["$top"])]
    if select:
        found = [{name: row.get(name) for name in select} for row in found]
    return [{"@odata.etag": 'W/"4801352"', **row} for row in found]
