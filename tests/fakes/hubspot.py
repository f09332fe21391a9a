"""A loopback HubSpot: CRM v3 calls, contacts (search, create), owners, with HubSpot's auth,
validation, error bodies and rate limits (a rolling burst window with X-HubSpot-RateLimit-*
headers, a 5/s search limit without headers, a daily quota answered with policyName DAILY).
Records live in memory for tests to assert on. Shapes: reference/crm-apis.md §1 and §9."""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import phonenumbers
from litestar import Litestar, Request, Response, get, patch, post, put

from tests.fakes.server import Daily, Faults, Window

STATUSES = {
    "BUSY",
    "CALLING_CRM_USER",
    "CANCELED",
    "COMPLETED",
    "CONNECTING",
    "FAILED",
    "IN_PROGRESS",
    "NO_ANSWER",
    "QUEUED",
    "RINGING",
}
DISPOSITIONS = {
    "9d9162e7-6cf3-4944-bf63-4dff82258764",
    "f240bbac-87c9-4f6e-bf70-924b57d47db7",
    "a4c4c377-d246-4b32-a13b-75a56a4cd0ff",
    "b2cf5968-551e-4856-9783-52b3da59a7d0",
    "73a0d17f-1163-4015-bdd5-ec830791da20",
    "17b47fee-58de-441e-a44c-c6300d46f273",
}
CALL_ID = re.compile(r"Wildix call (\S+)")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def _error(status: int, message: str, **extra: Any) -> Response[Any]:
    body = {"status": "error", "message": message, "correlationId": str(uuid.uuid4()), **extra}
    return Response(body, status_code=status)


@dataclass
class FakeHubSpot:
    token: str = "pat-na1-11111111-2222-3333-4444-555555555555"
    limit: int = 100  # per interval (burst, per app)
    interval: float = 10.0
    search_limit: int = 5  # per second
    daily_limit: int | None = None
    daily_reset_at: float | None = None
    region: str = "GB"  # how the calculated searchable phone properties are derived
    contacts: dict[str, dict[str, str]] = field(default_factory=dict)
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    owners: list[dict[str, Any]] = field(default_factory=list)
    log: list[tuple[str, str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.burst = Window(self.limit, self.interval)
        self.search = Window(self.search_limit, 1.0)
        self.daily = Daily(self.daily_limit, self.daily_reset_at)
        self.faults = Faults()
        self._ids = itertools.count(17591596434)
        self.app = self._app()

    # -- seeding and assertions ------------------------------------------------------------------

    def add_contact(self, phone: str, first: str, last: str, **props: str) -> str:
        cid = str(next(self._ids))
        self.contacts[cid] = {
            "phone": phone,
            "firstname": first,
            "lastname": last,
            **props,
            "hs_object_id": cid,
        }
        return cid

    def add_owner(self, email: str, first: str = "Owner") -> str:
        oid = str(next(self._ids))
        self.owners.append(
            {
                "id": oid,
                "email": email,
                "firstName": first,
                "lastName": "",
                "userId": int(oid) % 100000,
                "archived": False,
            }
        )
        return oid

    def calls_for(self, wildix_call_id: str) -> list[dict[str, Any]]:
        """HubSpot calls whose body names this Wildix call (what a human would find)."""
        return [
            c
            for c in self.calls.values()
            if wildix_call_id in CALL_ID.findall(c["properties"].get("hs_call_body", ""))
        ]

    @property
    def rejected_for_rate(self) -> int:
        return self.burst.rejected + self.search.rejected + self.daily.rejected

    # -- HTTP machinery --------------------------------------------------------------------------

    def _named_interval(self) -> float:
        """What relay is told to wait after a 429 (HubSpot sends no Retry-After)."""
        return self.interval if self.burst.announce is None else self.burst.announce

    def _rate_headers(self) -> dict[str, str]:
        headers = {
            "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(self._named_interval() * 1000)),
            "X-HubSpot-RateLimit-Max": str(self.limit),
            "X-HubSpot-RateLimit-Remaining": str(self.burst.remaining),
        }
        if self.daily.limit is not None:
            headers["X-HubSpot-RateLimit-Daily"] = str(self.daily.limit)
            headers["X-HubSpot-RateLimit-Daily-Remaining"] = str(int(self.daily.remaining or 0))
        return headers

    def _guard(self, request: Request[Any, Any, Any], search: bool = False) -> Response[Any] | None:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return _error(
                401,
                "Authentication credentials not found. This API supports OAuth 2.0 "
                "authentication and you can find more details at "
                "https://developers.hubspot.com/docs/methods/auth/oauth-overview",
                category="INVALID_AUTHENTICATION",
            )
        if not self.daily.spend():
            return _error(
                429,
                "You have reached your daily limit.",
                errorType="RATE_LIMIT",
                policyName="DAILY",
                requestId=str(uuid.uuid4()),
            )
        if search:
            if not self.search.allow():
                return _error(429, "You have reached your secondly limit.", errorType="RATE_LIMIT")
            return None
        if not self.burst.allow():
            resp = _error(
                429,
                "You have reached your ten_secondly_rolling limit.",
                errorType="RATE_LIMIT",
                policyName="TEN_SECONDLY_ROLLING",
                groupName="publicapi:private_app-api-calls-ten-secondly:1:2",
            )
            resp.headers.update(self._rate_headers())
            return resp
        return None

    def _reply(self, body: Any, status: int = 200) -> Response[Any]:
        return Response(body, status_code=status, headers=self._rate_headers())

    async def _json(self, request: Request[Any, Any, Any]) -> Any:
        try:
            return json.loads(await request.body())
        except ValueError:
            return None

    async def _properties(self, request: Request[Any, Any, Any]) -> tuple[Any, Any]:
        body = await self._json(request)
        return (body.get("properties") if isinstance(body, dict) else None), body

    def _finish(self, request: Request[Any, Any, Any], resp: Response[Any]) -> Response[Any]:
        self.log.append((request.method, request.url.path, resp.status_code))
        return resp

    # -- validation ------------------------------------------------------------------------------

    def _bad_properties(self, props: Any, create: bool) -> Response[Any] | None:
        if not isinstance(props, dict) or (not props and not create):
            return _error(
                400,
                "No properties found to update, please provide at least one.",
                category="VALIDATION_ERROR",
            )
        bad = [k for k, v in props.items() if not isinstance(v, str)]
        if bad:
            return _error(
                400,
                f"Property values were not valid: {bad} must be strings",
                category="VALIDATION_ERROR",
            )
        if create and not props.get("hs_timestamp"):
            return _error(
                400,
                "Error creating CALL. Some required properties were not set.",
                category="VALIDATION_ERROR",
            )
        checks = [
            ("hs_call_direction", lambda v: v in ("INBOUND", "OUTBOUND")),
            ("hs_call_status", lambda v: v in STATUSES),
            ("hs_call_duration", str.isdigit),
            ("hs_call_disposition", lambda v: v in DISPOSITIONS),
            ("hs_call_recording_url", lambda v: v.startswith("https://")),
            ("hubspot_owner_id", lambda v: any(o["id"] == v for o in self.owners)),
        ]
        for name, ok in checks:
            if name in props and props[name] != "" and not ok(props[name]):
                return _error(
                    400,
                    f"Property values were not valid: {name}={props[name]!r}",
                    category="VALIDATION_ERROR",
                    errors=[
                        {
                            "message": f"{props[name]!r} is not valid for {name}",
                            "code": "INVALID_OPTION",
                        }
                    ],
                )
        return None

    def _searchable(self, phone: str) -> str:
        try:
            return str(phonenumbers.parse(phone, self.region).national_number)
        except phonenumbers.NumberParseException:
            return re.sub(r"\D", "", phone)

    def _matches(self, props: dict[str, str], flt: dict[str, Any]) -> bool:
        name, op, value = flt.get("propertyName"), flt.get("operator"), str(flt.get("value"))
        if name == "hs_searchable_calculated_phone_number" and props.get("phone"):
            actual = self._searchable(props["phone"])
        elif name == "hs_searchable_calculated_mobile_number" and props.get("mobilephone"):
            actual = self._searchable(props["mobilephone"])
        else:
            actual = props.get(str(name))
        if actual is None:
            return False
        if op == "EQ":
            return actual == value
        if op == "CONTAINS_TOKEN":
            return value.lower() in re.split(r"[^0-9a-z]+", actual.lower())
        raise ValueError(f"operator {op} not supported by the fake")

    def _search(self, records: dict[str, dict[str, str]], body: Any) -> Response[Any]:
        if not isinstance(body, dict):
            return _error(400, "Invalid input JSON", category="VALIDATION_ERROR")
        groups = body.get("filterGroups") or []
        if len(groups) > 5:
            return _error(400, "Too many filter groups (max 5)", category="VALIDATION_ERROR")
        hits = [
            rid
            for rid, props in records.items()
            if not groups
            or any(all(self._matches(props, f) for f in g.get("filters", [])) for g in groups)
        ]
        wanted = body.get("properties") or ["createdate", "hs_object_id", "lastmodifieddate"]
        results = [
            {
                "id": rid,
                "properties": {k: records[rid].get(k) for k in wanted},
                "createdAt": _now(),
                "updatedAt": _now(),
                "archived": False,
            }
            for rid in hits[: int(body.get("limit") or 10)]
        ]
        return Response({"total": len(hits), "results": results}, status_code=200)

    # -- the API ---------------------------------------------------------------------------------

    def _app(self) -> Litestar:
        fake = self

        @post("/crm/v3/objects/calls", status_code=201)
        async def create_call(request: Request[Any, Any, Any]) -> Response[Any]:
            if (denied := fake._guard(request)) is not None:
                return fake._finish(request, denied)
            props, body = await fake._properties(request)
            if (bad := fake._bad_properties(props, create=True)) is not None:
                return fake._finish(request, bad)
            contacts = []
            for assoc in body.get("associations") or []:
                target = str((assoc.get("to") or {}).get("id"))
                types = assoc.get("types") or []
                if target not in fake.contacts or [
                    (t.get("associationCategory"), t.get("associationTypeId")) for t in types
                ] != [("HUBSPOT_DEFINED", 194)]:
                    return fake._finish(
                        request,
                        _error(
                            400,
                            f"Invalid association to {target} ({types})",
                            category="VALIDATION_ERROR",
                        ),
                    )
                contacts.append(target)
            cid = str(next(fake._ids))
            fake.calls[cid] = {
                "id": cid,
                "properties": dict(props),
                "contacts": contacts,
                "updates": 0,
                "created": time.time(),
            }
            if await fake.faults.after_persist():
                return fake._finish(request, _error(500, "internal error", category="ERROR"))
            return fake._finish(request, fake._reply(fake._object(cid), 201))

        @patch("/crm/v3/objects/calls/{call_id:str}")
        async def update_call(request: Request[Any, Any, Any]) -> Response[Any]:
            call_id = request.path_params["call_id"]
            if (denied := fake._guard(request)) is not None:
                return fake._finish(request, denied)
            props, _ = await fake._properties(request)
            if (bad := fake._bad_properties(props, create=False)) is not None:
                return fake._finish(request, bad)
            if call_id not in fake.calls:
                return fake._finish(
                    request,
                    _error(
                        404,
                        f"Object not found. objectId are usually numeric. {call_id}",
                        category="OBJECT_NOT_FOUND",
                    ),
                )
            fake.calls[call_id]["properties"].update(props)
            fake.calls[call_id]["updates"] += 1
            return fake._finish(request, fake._reply(fake._object(call_id)))

        @put("/crm/v3/objects/calls/{call_id:str}/associations/contact/{contact:str}/{kind:int}")
        async def associate(request: Request[Any, Any, Any]) -> Response[Any]:
            call_id, contact = request.path_params["call_id"], request.path_params["contact"]
            kind = request.path_params["kind"]
            if (denied := fake._guard(request)) is not None:
                return fake._finish(request, denied)
            if call_id not in fake.calls or contact not in fake.contacts or kind != 194:
                return fake._finish(request, _error(404, "not found", category="OBJECT_NOT_FOUND"))
            fake.calls[call_id]["contacts"].append(contact)
            return fake._finish(request, fake._reply(fake._object(call_id)))

        @get("/crm/v3/objects/calls")
        async def list_calls(request: Request[Any, Any, Any]) -> Response[Any]:
            if (denied := fake._guard(request)) is not None:
                return fake._finish(request, denied)
            limit = int(request.query_params.get("limit", 10))
            results = [fake._object(c) for c in list(fake.calls)[:limit]]
            return fake._finish(request, fake._reply({"results": results}))

        @post("/crm/v3/objects/calls/search", status_code=200)
        async def search_calls(request: Request[Any, Any, Any]) -> Response[Any]:
            if (denied := fake._guard(request, search=True)) is not None:
                return fake._finish(request, denied)
            records = {k: v["properties"] for k, v in fake.calls.items()}
            return fake._finish(request, fake._search(records, await fake._json(request)))

        @post("/crm/v3/objects/contacts/search", status_code=200)
        async def search_contacts(request: Request[Any, Any, Any]) -> Response[Any]:
            if (denied := fake._guard(request, search=True)) is not None:
                return fake._finish(request, denied)
            return fake._finish(request, fake._search(fake.contacts, await fake._json(request)))

        @post("/crm/v3/objects/contacts", status_code=201)
        async def create_contact(request: Request[Any, Any, Any]) -> Response[Any]:
            if (denied := fake._guard(request)) is not None:
                return fake._finish(request, denied)
            props, body = await fake._properties(request)
            if not isinstance(props, dict) or not all(isinstance(v, str) for v in props.values()):
                return fake._finish(
                    request,
                    _error(400, "Property values were not valid", category="VALIDATION_ERROR"),
                )
            cid = fake.add_contact(
                props.get("phone", ""), props.get("firstname", ""), props.get("lastname", "")
            )
            body = {"id": cid, "properties": fake.contacts[cid], "archived": False}
            return fake._finish(request, fake._reply(body, 201))

        @get("/crm/v3/owners")
        async def owners(request: Request[Any, Any, Any]) -> Response[Any]:
            if (denied := fake._guard(request)) is not None:
                return fake._finish(request, denied)
            email = request.query_params.get("email")
            found = [o for o in fake.owners if email is None or o["email"] == email]
            return fake._finish(request, fake._reply({"results": found}))

        return Litestar(
            [
                create_call,
                update_call,
                associate,
                list_calls,
                search_calls,
                search_contacts,
                create_contact,
                owners,
            ],
            debug=False,
        )

    def _object(self, cid: str) -> dict[str, Any]:
        call = self.calls[cid]
        props = {
            **call["properties"],
            "hs_object_id": cid,
            "hs_createdate": _now(),
            "hs_lastmodifieddate": _now(),
        }
        return {
            "id": cid,
            "properties": props,
            "createdAt": _now(),
            "updatedAt": _now(),
            "archived": False,
        }
