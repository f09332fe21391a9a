"""A loopback Zoho CRM and its data centre's accounts server: the refresh-token grant (with
Zoho's ten-tokens-per-ten-minutes rule and its HTTP-200 error answers), and the v8 API a call
logger uses: Calls (create, update refusing a Call_Type change, word search), Contacts and
Leads phone search (204 when nothing matches), Contact create, users. ``Zoho-oauthtoken``
auth with INVALID_TOKEN / OAUTH_SCOPE_MISMATCH, per-record error envelopes, 429
TOO_MANY_REQUESTS. Records live in memory for tests. Shapes: reference/crm-apis.md §3 and §9."""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from litestar import Litestar, Request, Response, get, post, put

from tests.fakes.oauth import Tokens
from tests.fakes.server import Faults, Window

ALL_SCOPES = frozenset({"ZohoCRM.modules.ALL", "ZohoCRM.users.READ"})
START = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2}")
DURATION = re.compile(r"\d{1,3}:\d{2}")
CALL_ID = re.compile(r"Wildix call (\S+)")
CALL_FIELDS = {
    "Subject",
    "Description",
    "Call_Type",
    "Call_Start_Time",
    "Call_Duration",
    "Who_Id",
    "What_Id",
    "$se_module",
    "Owner",
    "Outgoing_Call_Status",
    "Call_Purpose",
    "Call_Result",
}


def _error(status: int, code: str, message: str) -> Response[Any]:
    return Response(
        {"code": code, "details": {}, "message": message, "status": "error"}, status_code=status
    )


def _record_error(code: str, message: str, **details: Any) -> Response[Any]:
    body = {"data": [{"code": code, "details": details, "message": message, "status": "error"}]}
    return Response(body, status_code=400)


def _digits(text: str | None) -> str:
    return re.sub(r"\D", "", text or "")


@dataclass
class FakeZoho:
    client_id: str = "1000.RELAYWILDIXCLIENT0000000000AB"
    client_secret: str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0a9b8c7d6e5"
    limit: int = 100  # API requests per interval (the account's credits and concurrency)
    interval: float = 1.0
    token_limit: int = 10  # new access tokens per refresh token per token_window seconds
    token_window: float = 600.0
    contacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    leads: dict[str, dict[str, Any]] = field(default_factory=dict)
    users: list[dict[str, Any]] = field(default_factory=list)
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    log: list[tuple[str, str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tokens = Tokens("1000.", lifetime=3600)
        self.refresh_token = self.tokens.new_refresh_token(ALL_SCOPES)
        self.burst = Window(self.limit, self.interval)
        self.minted: dict[str, Window] = {}
        self.faults = Faults()
        self._ids = itertools.count(4876876000001036016)
        self.app = self._app()

    # -- seeding and assertions ------------------------------------------------------------------

    def _person(self, table: dict[str, dict[str, Any]], phone: str, first: str, last: str) -> str:
        rid = str(next(self._ids))
        table[rid] = {
            "id": rid,
            "First_Name": first,
            "Last_Name": last,
            "Full_Name": " ".join(filter(None, (first, last))),
            "Phone": phone,
            "Mobile": None,
            "Owner": {"id": "4876876000000225013", "name": "Admin"},
        }
        return rid

    def add_contact(self, phone: str, first: str, last: str) -> str:
        return self._person(self.contacts, phone, first, last)

    def add_lead(self, phone: str, first: str, last: str) -> str:
        return self._person(self.leads, phone, first, last)

    def add_user(self, email: str, name: str = "User") -> str:
        uid = str(next(self._ids))
        self.users.append({"id": uid, "email": email, "full_name": name, "status": "active"})
        return uid

    def calls_for(self, wildix_call_id: str) -> list[dict[str, Any]]:
        return [
            c
            for c in self.calls.values()
            if wildix_call_id in CALL_ID.findall(c.get("Description") or "")
        ]

    def new_refresh_token(self, scopes: frozenset[str] = ALL_SCOPES) -> str:
        """A new grant from the API console, exchanged for a refresh token."""
        self.refresh_token = self.tokens.new_refresh_token(scopes)
        return self.refresh_token

    # -- HTTP machinery --------------------------------------------------------------------------

    def _finish(self, request: Request[Any, Any, Any], resp: Response[Any]) -> Response[Any]:
        self.log.append((request.method, request.url.path, resp.status_code))
        return resp

    def _guard(self, request: Request[Any, Any, Any], scope: str) -> Response[Any] | None:
        """``scope``: e.g. "modules.calls.CREATE"; granted by its own name, .ALL, or modules.ALL."""
        auth = request.headers.get("authorization", "")
        info = (
            self.tokens.check(auth.removeprefix("Zoho-oauthtoken "))
            if auth.startswith("Zoho-oauthtoken ")
            else None
        )
        if info is None:
            return _error(401, "INVALID_TOKEN", "invalid oauth token")
        area = scope.rpartition(".")[0]
        wanted = {f"ZohoCRM.{scope}", f"ZohoCRM.{area}.ALL"}
        if area.startswith("modules."):
            wanted.add("ZohoCRM.modules.ALL")
        if not wanted & info["scopes"]:
            return _error(401, "OAUTH_SCOPE_MISMATCH", "Unauthorized")
        if not self.burst.allow():
            return _error(429, "TOO_MANY_REQUESTS", "The API request limit has been exceeded.")
        return None

    async def _data(self, request: Request[Any, Any, Any]) -> dict[str, Any] | None:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return None
        data = body.get("data") if isinstance(body, dict) else None
        return (
            data[0]
            if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict)
            else None
        )

    def _bad_call(
        self, rec: dict[str, Any] | None, existing: dict[str, Any] | None
    ) -> Response[Any] | None:
        if rec is None:
            return _record_error("INVALID_DATA", "invalid data", api_name="data")
        for name in rec:
            if name not in CALL_FIELDS:
                return _record_error("INVALID_DATA", "invalid data", api_name=name)
        if existing is not None and "Call_Type" in rec:
            return _record_error(
                "INVALID_DATA", "Call_Type cannot be updated", api_name="Call_Type"
            )
        if existing is not None and "Owner" in rec and rec["Owner"] != existing.get("Owner"):
            return _record_error(
                "INVALID_DATA", "the owner of a completed call cannot change", api_name="Owner"
            )
        merged = {**(existing or {}), **rec}
        if merged.get("Call_Type") not in ("Inbound", "Outbound", "Missed"):
            return _record_error("INVALID_DATA", "invalid data", api_name="Call_Type")
        if not START.fullmatch(str(merged.get("Call_Start_Time", ""))):
            return _record_error("INVALID_DATA", "invalid data", api_name="Call_Start_Time")
        duration = merged.get("Call_Duration")
        if duration is not None and not DURATION.fullmatch(str(duration)):
            return _record_error("INVALID_DATA", "invalid data", api_name="Call_Duration")
        if merged["Call_Type"] != "Missed" and duration is None:
            return _record_error(
                "MANDATORY_NOT_FOUND", "required field not found", api_name="Call_Duration"
            )
        who = (rec.get("Who_Id") or {}).get("id") if "Who_Id" in rec else None
        if who is not None and who not in self.contacts:
            return _record_error(
                "INVALID_DATA", "the related id given seems to be invalid", api_name="Who_Id"
            )
        if "What_Id" in rec:
            table = {"Leads": self.leads, "Contacts": self.contacts}.get(rec.get("$se_module", ""))
            if table is None or (rec["What_Id"] or {}).get("id") not in table:
                return _record_error(
                    "INVALID_DATA", "the related id given seems to be invalid", api_name="What_Id"
                )
        owner = (rec.get("Owner") or {}).get("id") if "Owner" in rec else None
        if owner is not None and not any(u["id"] == owner for u in self.users):
            return _record_error("INVALID_DATA", "invalid data", api_name="Owner")
        return None

    def _success(self, rid: str, message: str, status: int) -> Response[Any]:
        details = {
            "id": rid,
            "Created_Time": "2025-11-29T10:30:10+00:00",
            "Modified_By": {"id": "1", "name": "API"},
        }
        body = {
            "data": [
                {"code": "SUCCESS", "details": details, "message": message, "status": "success"}
            ]
        }
        return Response(body, status_code=status)

    def _token(self, form: dict[str, str]) -> tuple[dict[str, Any], int]:
        if (form.get("client_id"), form.get("client_secret")) != (
            self.client_id,
            self.client_secret,
        ):
            outcome: Any = {"error": "invalid_client"}
        elif form.get("grant_type") != "refresh_token":
            outcome = {"error": "unsupported_grant_type"}
        elif (grant := self.tokens.usable(form.get("refresh_token"))) is None:
            outcome = {"error": "invalid_code"}
        else:
            rt = str(form["refresh_token"])
            if not self.minted.setdefault(rt, Window(self.token_limit, self.token_window)).allow():
                self.tokens.requests.append(("refresh_token", "Access Denied"))
                return {
                    "error_description": "You have made too many requests continuously. "
                    "Please try again after some time.",
                    "error": "Access Denied",
                    "status": "failure",
                }, 400
            outcome = {"access_token": self.tokens.issue(rt, grant.scopes)}
        self.tokens.requests.append(("refresh_token", outcome.get("error", "ok")))
        return outcome, 200  # Zoho answers refused grants with HTTP 200 too

    def _search(self, table: dict[str, dict[str, Any]], phone: str) -> list[dict[str, Any]]:
        digits = _digits(phone)
        return [
            r
            for r in table.values()
            if len(digits) >= 7
            and any(_digits(r.get(f)).endswith(digits) for f in ("Phone", "Mobile") if r.get(f))
        ]

    def _app(self) -> Litestar:
        fake = self

        @post("/oauth/v2/token", status_code=200)
        async def token(request: Request[Any, Any, Any]) -> Response[Any]:
            form = {**dict(request.query_params), **dict(await request.form())}
            body, status = fake._token(form)
            if "access_token" in body:
                body |= {
                    "scope": "ZohoCRM.modules.ALL ZohoCRM.users.READ",
                    "api_domain": str(request.base_url).rstrip("/"),
                    "token_type": "Bearer",
                    "expires_in": int(fake.tokens.lifetime or 3600),
                }
            fake.log.append(("POST", request.url.path, status))
            return Response(body, status_code=status)

        @post("/crm/v8/Calls", status_code=201)
        async def create_call(request: Request[Any, Any, Any]) -> Response[Any]:
            if (denied := fake._guard(request, "modules.calls.CREATE")) is not None:
                return fake._finish(request, denied)
            rec = await fake._data(request)
            if (bad := fake._bad_call(rec, None)) is not None:
                return fake._finish(request, bad)
            assert rec is not None
            rid = str(next(fake._ids))
            fake.calls[rid] = {"id": rid, **rec, "updates": 0}
            if await fake.faults.after_persist():
                return fake._finish(request, _error(500, "INTERNAL_ERROR", "Internal Server Error"))
            return fake._finish(request, fake._success(rid, "record added", 201))

        @put("/crm/v8/Calls/{call_id:str}", status_code=200)
        async def update_call(request: Request[Any, Any, Any]) -> Response[Any]:
            call_id = request.path_params["call_id"]
            if (denied := fake._guard(request, "modules.calls.UPDATE")) is not None:
                return fake._finish(request, denied)
            if call_id not in fake.calls:
                return fake._finish(
                    request,
                    _record_error(
                        "INVALID_DATA", "the id given seems to be invalid", api_name="id"
                    ),
                )
            rec = await fake._data(request)
            if (bad := fake._bad_call(rec, fake.calls[call_id])) is not None:
                return fake._finish(request, bad)
            assert rec is not None
            fake.calls[call_id].update(rec)
            fake.calls[call_id]["updates"] += 1
            return fake._finish(request, fake._success(call_id, "record updated", 200))

        @get("/crm/v8/Calls")
        async def list_calls(request: Request[Any, Any, Any]) -> Response[Any]:
            if (denied := fake._guard(request, "modules.calls.READ")) is not None:
                return fake._finish(request, denied)
            if "fields" not in request.query_params:
                return fake._finish(
                    request,
                    _error(
                        400, "REQUIRED_PARAM_MISSING", "One of the expected parameter is missing"
                    ),
                )
            rows = [{"id": c["id"], "Subject": c.get("Subject")} for c in fake.calls.values()][:1]
            if not rows:
                return fake._finish(request, Response(None, status_code=204))
            return fake._finish(
                request, Response({"data": rows, "info": {"count": 1, "more_records": False}})
            )

        # Calls/search spelled out: it would otherwise match Calls/{call_id} (PUT only)
        @get(["/crm/v8/{module:str}/search", "/crm/v8/Calls/search"])
        async def search(request: Request[Any, Any, Any]) -> Response[Any]:
            module = request.url.path.split("/")[3]
            if (denied := fake._guard(request, f"modules.{module.lower()}.READ")) is not None:
                return fake._finish(request, denied)
            params = request.query_params
            if module == "Calls" and params.get("word"):
                word = params["word"].lower()
                rows = [
                    c
                    for c in fake.calls.values()
                    if word in re.split(r"[^0-9a-z]+", (c.get("Description") or "").lower())
                ]
            elif module in ("Contacts", "Leads") and params.get("phone"):
                rows = fake._search(
                    fake.contacts if module == "Contacts" else fake.leads, params["phone"]
                )
            else:
                return fake._finish(
                    request,
                    _error(
                        400, "REQUIRED_PARAM_MISSING", "One of the expected parameter is missing"
                    ),
                )
            if not rows:
                return fake._finish(request, Response(None, status_code=204))
            info = {"per_page": 200, "count": len(rows), "page": 1, "more_records": False}
            return fake._finish(request, Response({"data": rows, "info": info}))

        @post("/crm/v8/Contacts", status_code=201)
        async def create_contact(request: Request[Any, Any, Any]) -> Response[Any]:
            if (denied := fake._guard(request, "modules.contacts.CREATE")) is not None:
                return fake._finish(request, denied)
            rec = await fake._data(request)
            if rec is None or not rec.get("Last_Name"):
                return fake._finish(
                    request,
                    _record_error(
                        "MANDATORY_NOT_FOUND", "required field not found", api_name="Last_Name"
                    ),
                )
            rid = fake.add_contact(
                rec.get("Phone", ""), rec.get("First_Name", ""), rec["Last_Name"]
            )
            return fake._finish(request, fake._success(rid, "record added", 201))

        @get("/crm/v8/users")
        async def users(request: Request[Any, Any, Any]) -> Response[Any]:
            if (denied := fake._guard(request, "users.READ")) is not None:
                return fake._finish(request, denied)
            info = {"per_page": 200, "count": len(fake.users), "page": 1, "more_records": False}
            return fake._finish(request, Response({"users": fake.users, "info": info}))

        return Litestar(
            [token, create_call, update_call, list_calls, search, create_contact, users],
            debug=False,
        )
