"""A loopback Microsoft Dynamics 365 (Dataverse) and its Microsoft Entra ID token endpoint: the
client credentials grant (tenant, client id, secret and the environment's ``/.default`` scope
checked, Entra's AADSTS error answers), and the Web API v9.2 a call logger uses: phonecalls
(create answering ``204`` + ``OData-EntityId``, or ``201`` with ``Prefer: return=representation``;
``PATCH`` that upserts unless ``If-Match: *``), activity parties and ``@odata.bind`` lookups checked
against the records, OData ``$filter``/``$select``/``$top`` on contacts, leads, systemusers and
phonecalls, contact create. Bearer auth (``401`` + ``WWW-Authenticate``), OData error bodies, and
the service protection limits: requests per user in a sliding window and concurrent requests,
both ``429`` with ``Retry-After``. Records live in memory for tests. Shapes: reference/crm-apis.md
§5a and docs/crm.md's `dynamics` section."""

from __future__ import annotations

import contextlib
import json
import math
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from litestar import Litestar, Request, Response, get, patch, post

from tests.fakes.dynamics_query import QueryError, error, query
from tests.fakes.dynamics_rules import (
    DEFAULT_STATUS,
    DOES_NOT_EXIST,
    ENTITY,
    GUID,
    INVALID_ARGUMENT,
    NOT_ON_TYPE,
    PHONECALL,
    bad_phonecall,
)
from tests.fakes.oauth import Tokens
from tests.fakes.server import Faults, Window

RECORD = re.compile(rf"(\w+)\(({GUID})\)")
CALL_ID = re.compile(r"Wildix call (\S+)")
# Dataverse documents a completed or canceled phone call as read-only, not the error it answers
# an update of one with: the 400, the generic code and the wording are the fake's guess
READ_ONLY = INVALID_ARGUMENT
PERSON_COLUMNS = {"fullname", "firstname", "lastname", "telephone1", "mobilephone", "statecode"}
COLUMNS = {
    "contacts": {"contactid", "_ownerid_value", *PERSON_COLUMNS},
    "leads": {"leadid", "_ownerid_value", *PERSON_COLUMNS},
    "systemusers": {"systemuserid", "fullname", "internalemailaddress", "isdisabled"},
    "phonecalls": {"activityid", "statecode", "statuscode", *PHONECALL}
    - {"phonecall_activity_parties"},
}


@dataclass
class FakeDynamics:
    tenant_id: str = "5f4b2c1e-8a7d-4e3f-9b6a-1c2d3e4f5a6b"
    client_id: str = "0e9d8c7b-6a59-4f3e-8d2c-1b0a9f8e7d6c"
    client_secret: str = "Wx8Q~relay.Test-Secret_0123456789abcdefXYZ"
    api_version: str = "v9.2"
    limit: int = 6000  # requests per user in any `interval` seconds (service protection)
    interval: float = 300.0
    search_limit: int = 6000  # contact and lead queries (Dataverse counts them as any request)
    concurrency: int = 52  # concurrent requests per user
    retry_after: float | None = None  # the 429's Retry-After; None: until the window frees
    token_lifetime: float = 3599.0
    contacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    leads: dict[str, dict[str, Any]] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    phonecalls: dict[str, dict[str, Any]] = field(default_factory=dict)
    log: list[tuple[str, str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tokens = Tokens("eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.", lifetime=self.token_lifetime)
        self.burst = Window(self.limit, self.interval)
        self.search = Window(self.search_limit, self.interval)
        self.faults = Faults()  # after a phone call is created
        self.update_faults = Faults()  # after a phone call is updated
        self.in_flight = 0
        self.busiest_concurrency = 0
        self.rejected_for_concurrency = 0
        self.app = self._app()

    # -- seeding and assertions ------------------------------------------------------------------

    def _person(
        self, table: dict[str, dict[str, Any]], key: str, phone: str, first: str, last: str
    ) -> str:
        rid = str(uuid.uuid4())
        table[rid] = {
            key: rid,
            "firstname": first,
            "lastname": last,
            "fullname": " ".join(filter(None, (first, last))),
            "telephone1": phone,
            "mobilephone": None,
            "statecode": 0,
            "_ownerid_value": None,
        }
        return rid

    def add_contact(self, phone: str, first: str, last: str) -> str:
        return self._person(self.contacts, "contactid", phone, first, last)

    def add_lead(self, phone: str, first: str, last: str) -> str:
        return self._person(self.leads, "leadid", phone, first, last)

    def add_user(self, email: str, name: str = "User") -> str:
        uid = str(uuid.uuid4())
        self.users[uid] = {
            "systemuserid": uid,
            "fullname": name,
            "internalemailaddress": email,
            "isdisabled": False,
        }
        return uid

    def calls_for(self, wildix_call_id: str) -> list[dict[str, Any]]:
        return [
            c
            for c in self.phonecalls.values()
            if wildix_call_id in CALL_ID.findall(c.get("description") or "")
        ]

    # -- HTTP machinery --------------------------------------------------------------------------

    def _tables(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {
            "contacts": self.contacts,
            "leads": self.leads,
            "systemusers": self.users,
            "phonecalls": self.phonecalls,
        }

    def _finish(self, request: Request[Any, Any, Any], resp: Response[Any]) -> Response[Any]:
        self.log.append((request.method, request.url.path, resp.status_code))
        return resp

    def _limited(self, code: str, message: str, wait: float) -> Response[Any]:
        resp = error(429, code, message)
        resp.headers["Retry-After"] = str(max(math.ceil(wait), 1))
        return resp

    def _guard(self, request: Request[Any, Any, Any], search: bool) -> Response[Any] | None:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or self.tokens.check(auth[7:]) is None:
            resp = Response(None, status_code=401)
            resp.headers["WWW-Authenticate"] = (
                'Bearer error="invalid_token", error_description="The access token is invalid '
                'or expired", authorization_uri="https://login.microsoftonline.com/common/oauth2/'
                'authorize"'
            )
            return resp
        if request.path_params["version"] != self.api_version:
            return error(404, "0x8006088a", "Resource not found for the segment 'data'.")
        if self.in_flight > self.concurrency:
            self.rejected_for_concurrency += 1
            return self._limited(
                "0x80072326",
                f"Number of concurrent requests exceeded the limit of {self.concurrency}.",
                self.retry_after or 1,
            )
        if not self.burst.allow() or (search and not self.search.allow()):
            window = self.burst if self.burst.remaining == 0 else self.search
            return self._limited(
                "0x80072322",
                f"Number of requests exceeded the limit of {window.limit} over time window of "
                f"{window.interval:g} seconds.",
                self.retry_after if self.retry_after is not None else window.reset_in(),
            )
        return None

    @contextlib.asynccontextmanager
    async def _counted(self) -> AsyncIterator[None]:
        self.in_flight += 1
        self.busiest_concurrency = max(self.busiest_concurrency, self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1

    async def _body(self, request: Request[Any, Any, Any]) -> Any:
        try:
            return json.loads(await request.body())
        except ValueError:
            return None

    # -- the API ---------------------------------------------------------------------------------

    def _retrieve(self, request: Request[Any, Any, Any], resource: str, rid: str) -> Response[Any]:
        """``GET <entity set>(<id>)``: one record, its ``$select`` columns."""
        table = self._tables().get(resource)
        if table is None:
            return error(404, "0x8006088a", f"Resource not found for the segment '{resource}'.")
        record = table.get(rid.lower())
        if record is None:
            return error(404, DOES_NOT_EXIST, f"{ENTITY[resource]} With Id = {rid} Does Not Exist")
        params = {k: v for k, v in request.query_params.items() if k == "$select"}
        try:
            [row] = query([record], params, COLUMNS[resource], ENTITY[resource])
        except QueryError as exc:
            return error(400, NOT_ON_TYPE, str(exc))
        context = f"{request.base_url}api/data/{self.api_version}/$metadata#{resource}/$entity"
        return Response({"@odata.context": context, **row}, status_code=200)

    def _token(self, tenant: str, form: dict[str, str], base: str) -> tuple[dict[str, Any], int]:
        refused: tuple[str, str, int] | None = None
        if tenant != self.tenant_id:
            refused = ("invalid_request", f"AADSTS90002: Tenant '{tenant}' not found.", 400)
        elif form.get("grant_type") != "client_credentials":
            refused = (
                "unsupported_grant_type",
                "AADSTS70003: The app requested an unsupported grant type.",
                400,
            )
        elif form.get("client_id") != self.client_id:
            refused = (
                "unauthorized_client",
                f"AADSTS700016: Application with identifier '{form.get('client_id')}' was not "
                f"found in the directory '{tenant}'.",
                400,
            )
        elif form.get("client_secret") != self.client_secret:
            refused = (
                "invalid_client",
                "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in "
                "the request is the client secret value, not the client secret ID.",
                401,
            )
        elif form.get("scope") != f"{base}/.default":
            refused = (
                "invalid_scope",
                f"AADSTS500011: The resource principal named {form.get('scope')} was not found "
                f"in the tenant named {tenant}.",
                400,
            )
        self.tokens.requests.append(("client_credentials", refused[0] if refused else "ok"))
        if refused:
            description = f"{refused[1]} Trace ID: 0c1f Correlation ID: 9a2b Timestamp: 2025-11-29"
            return {"error": refused[0], "error_description": description}, refused[2]
        return {
            "token_type": "Bearer",
            "expires_in": int(self.token_lifetime),
            "ext_expires_in": int(self.token_lifetime),
            "access_token": self.tokens.issue(),
        }, 200

    def _app(self) -> Litestar:
        fake = self
        data = "/api/data/{version:str}/{resource:str}"

        @post("/{tenant:str}/oauth2/v2.0/token", status_code=200)
        async def token(request: Request[Any, Any, Any]) -> Response[Any]:
            form = dict(await request.form())
            base = str(request.base_url).rstrip("/")
            body, status = fake._token(request.path_params["tenant"], form, base)
            fake.log.append(("POST", request.url.path, status))
            return Response(body, status_code=status)

        @get(data)
        async def read(request: Request[Any, Any, Any]) -> Response[Any]:
            resource = request.path_params["resource"]
            async with fake._counted():
                searching = resource in ("contacts", "leads")
                if (denied := fake._guard(request, searching)) is not None:
                    return fake._finish(request, denied)
                if (match := RECORD.fullmatch(resource)) is not None:
                    return fake._finish(request, fake._retrieve(request, match[1], match[2]))
                table = fake._tables().get(resource)
                if table is None:
                    return fake._finish(
                        request,
                        error(
                            404, "0x8006088a", f"Resource not found for the segment '{resource}'."
                        ),
                    )
                params = dict(request.query_params)
                try:
                    rows = query(list(table.values()), params, COLUMNS[resource], ENTITY[resource])
                except QueryError as exc:
                    return fake._finish(request, error(400, NOT_ON_TYPE, str(exc)))
                context = f"{request.base_url}api/data/{fake.api_version}/$metadata#{resource}"
                return fake._finish(
                    request, Response({"@odata.context": context, "value": rows}, status_code=200)
                )

        @post(data, status_code=201)
        async def create(request: Request[Any, Any, Any]) -> Response[Any]:
            resource = request.path_params["resource"]
            async with fake._counted():
                if (denied := fake._guard(request, False)) is not None:
                    return fake._finish(request, denied)
                body = await fake._body(request)
                if resource == "contacts":
                    if not isinstance(body, dict) or not body.get("lastname"):
                        return fake._finish(
                            request, error(400, "0x80040200", "lastname is required")
                        )
                    rid = fake.add_contact(
                        body.get("telephone1", ""), body.get("firstname", ""), body["lastname"]
                    )
                elif resource == "phonecalls":
                    if (bad := bad_phonecall(body, fake._tables())) is not None:
                        return fake._finish(request, bad)
                    rid = str(uuid.uuid4())
                    fake.phonecalls[rid] = {
                        "activityid": rid,
                        "statecode": 0,
                        "statuscode": 1,
                        **body,
                        "updates": 0,
                    }
                    if await fake.faults.after_persist():
                        return fake._finish(
                            request, error(500, "0x80040216", "An unexpected error occurred.")
                        )
                else:
                    return fake._finish(request, error(405, "0x80060888", "Method not allowed."))
                url = f"{request.base_url}api/data/{fake.api_version}/{resource}({rid})"
                if "return=representation" in request.headers.get("prefer", ""):
                    record = fake._tables()[resource][rid]
                    resp = Response(
                        {k: v for k, v in record.items() if k != "updates"}, status_code=201
                    )
                else:
                    resp = Response(None, status_code=204)
                resp.headers["OData-EntityId"] = url
                return fake._finish(request, resp)

        @patch(data, status_code=200)
        async def update(request: Request[Any, Any, Any]) -> Response[Any]:
            match = RECORD.fullmatch(request.path_params["resource"])
            async with fake._counted():
                if (denied := fake._guard(request, False)) is not None:
                    return fake._finish(request, denied)
                if match is None or match[1] != "phonecalls":
                    return fake._finish(request, error(405, "0x80060888", "Method not allowed."))
                rid = match[2].lower()
                body = await fake._body(request)
                current = fake.phonecalls.get(rid, {"statecode": 0})
                if (bad := bad_phonecall(body, fake._tables(), current)) is not None:
                    return fake._finish(request, bad)
                reopens = set(body) <= {"statecode", "statuscode"} and body.get("statecode") == 0
                if current["statecode"] != 0 and not reopens:
                    state = "completed" if current["statecode"] == 1 else "canceled"
                    return fake._finish(
                        request,
                        error(
                            400,
                            READ_ONLY,
                            f"This phonecall is {state}: completed and canceled phone calls are "
                            "read-only and can't be edited.",
                        ),
                    )
                if rid not in fake.phonecalls:
                    if request.headers.get("if-match") == "*":
                        return fake._finish(
                            request,
                            error(404, DOES_NOT_EXIST, f"phonecall With Id = {rid} Does Not Exist"),
                        )
                    # an upsert: Dataverse creates the record under the given id
                    fake.phonecalls[rid] = {
                        "activityid": rid,
                        "statecode": 0,
                        "statuscode": 1,
                        "updates": -1,
                    }
                if "statecode" in body:
                    body.setdefault("statuscode", DEFAULT_STATUS[body["statecode"]])
                fake.phonecalls[rid].update(body)
                fake.phonecalls[rid]["updates"] += 1
                if await fake.update_faults.after_persist():
                    return fake._finish(
                        request, error(500, "0x80040216", "An unexpected error occurred.")
                    )
                return fake._finish(request, Response(None, status_code=204))

        return Litestar([token, read, create, update], debug=False)
