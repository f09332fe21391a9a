"""The query languages of the Salesforce fake: the SOQL and SOSL shapes a call logger sends,
parsed strictly enough that a malformed or unescaped query fails as it would in Salesforce."""

from __future__ import annotations

import re
from typing import Any

from litestar import Response

Rows = list[dict[str, Any]] | Response[Any]
SOSL_RESERVED = set("&|!(){}[]^\"~*?:'+-")
SOQL = re.compile(
    r"SELECT (?P<fields>.+?) FROM (?P<obj>\w+)(?: WHERE (?P<where>.+?))?(?: LIMIT \d+)?"
)
CONDITION = re.compile(r"(\w+) = ('(?:[^'\\]|\\.)*'|true|false)")


def errors(status: int, code: str, message: str, fields: list[str] | None = None) -> Response[Any]:
    """Salesforce's error answer: a JSON array of {message, errorCode, fields?}."""
    item: dict[str, Any] = {"message": message, "errorCode": code}
    if fields is not None:
        item["fields"] = fields
    return Response([item], status_code=status)


def _digits(text: str | None) -> str:
    return re.sub(r"\D", "", text or "")


def soql(query: str, tables: dict[str, dict[str, dict[str, Any]]]) -> Rows:
    """SELECT fields FROM object [WHERE a = 'x' AND b = true] [LIMIT n]: what relay sends."""
    match = SOQL.fullmatch(query.strip())
    if not match or match["obj"] not in tables:
        return errors(400, "MALFORMED_QUERY", f"unexpected token: {query[:60]}")
    conditions: dict[str, Any] = {}
    if match["where"]:
        parts = match["where"].split(" AND ")
        for part in parts:
            cond = CONDITION.fullmatch(part.strip())
            if not cond:
                return errors(400, "MALFORMED_QUERY", f"unexpected token: {part[:60]}")
            raw = cond[2]
            value: Any = (
                raw == "true" if raw in ("true", "false") else re.sub(r"\\(.)", r"\1", raw[1:-1])
            )
            conditions[cond[1]] = value
    fields = [f.strip() for f in match["fields"].split(",")]
    rows = [
        r
        for r in tables[match["obj"]].values()
        if all(r.get(k) == v for k, v in conditions.items())
    ]
    return [{"attributes": {"type": match["obj"]}, **{f: r.get(f) for f in fields}} for r in rows]


def sosl(query: str, tables: dict[str, dict[str, dict[str, Any]]]) -> Rows:
    """FIND {terms} IN PHONE FIELDS RETURNING Obj(fields [WHERE ...]), ...: unescaped reserved
    characters are a syntax error; a phone matches on its digits (or their national tail)."""
    match = re.fullmatch(r"FIND \{(.*)\} IN PHONE FIELDS RETURNING (.+)", query.strip())
    if not match:
        return errors(400, "MALFORMED_SEARCH", f"unexpected token: {query[:60]}")
    current, chars = "", iter(match[1])
    for c in chars:
        if c == "\\":
            current += next(chars, "")
        elif c in SOSL_RESERVED:
            return errors(
                400,
                "MALFORMED_SEARCH",
                f"line 1:{len(current) + 6} no viable alternative at character '{c}'",
            )
        else:
            current += c
    terms = [_digits(t) for t in current.split(" OR ") if len(_digits(t)) >= 7]
    found = []
    for obj, spec in re.findall(r"(\w+)\(([^)]*)\)", match[2]):
        fields = [f.strip() for f in spec.split(" WHERE ")[0].split(",")]
        table = tables.get(obj, {}) if obj in ("Contact", "Lead") else {}
        for rec in table.values():
            phones = [_digits(rec.get("Phone")), _digits(rec.get("MobilePhone"))]
            if any(p and (p == t or p.endswith(t)) for p in phones for t in terms):
                found.append({"attributes": {"type": obj}, **{f: rec.get(f) for f in fields}})
    return found
