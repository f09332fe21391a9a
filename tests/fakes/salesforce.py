"""A loopback Salesforce: the OAuth token endpoint (client credentials, JWT bearer verified with
the test key's public half, refresh token), and the REST API a call logger uses: Task create and
update, SOQL queries, SOSL phone search, Contact create. Salesforce's JSON error arrays, the
``Sforce-Limit-Info`` header on every answer, the org's 24-hour request limit (403
``REQUEST_LIMIT_EXCEEDED``), ``401 INVALID_SESSION_ID``. Records live in memory for tests.
Shapes: reference/crm-apis.md §2 and §9."""

from __future__ import annotations

import itertools
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from litestar import Litestar, Request, Response, get, patch, post

from tests.fakes.oauth import Tokens
from tests.fakes.salesforce_query import errors, soql, sosl
from tests.fakes.server import Daily, Faults

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TEST_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
TEST_KEY_PEM = TEST_KEY.private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.TraditionalOpenSSL,
    serialization.NoEncryption(),
).decode()
PICKLISTS = {
    "CallType": {"Inbound", "Internal", "Outbound"},
    "TaskSubtype": {"Task", "Email", "ListEmail", "Cadence", "Call", "LinkedIn"},
    "Status": {"Not Started", "In Progress", "Completed", "Waiting on someone else", "Deferred"},
}
TASK_FIELDS = {
    *PICKLISTS,
    "Subject",
    "Description",
    "CallObject",
    "CallDisposition",
    "CallDurationInSeconds",
    "ActivityDate",
    "WhoId",
    "WhatId",
    "OwnerId",
    "Priority",
    "Type",
}
CALL_ID = re.compile(r"Wildix call (\S+)")


@dataclass
class FakeSalesforce:
    client_id: str = "3MVG9rZjd7MXFdLgWildixRelayConsumerKey"
    client_secret: str = "E7F1B2C3D4A5968778695A4B3C2D1E0F"
    username: str = "relay-api@acme.example"
    api_version: str = "v67.0"
    daily_limit: int = 15000
    daily_reset_at: float | None = None
    client_credentials: bool = True  # the app has a run-as user for the client credentials flow
    contacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    leads: dict[str, dict[str, Any]] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    log: list[tuple[str, str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tokens = Tokens("00D5g000004Pv2E!AQ")
        self.refresh_token = self.tokens.new_refresh_token()
        self.public_key = TEST_KEY.public_key()
        self.daily = Daily(self.daily_limit, self.daily_reset_at)
        self.faults = Faults()
        self._ids = itertools.count(1)
        self.app = self._app()

    # -- seeding and assertions ------------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):012d}AAA"

    def add_contact(self, phone: str, first: str, last: str, mobile: str | None = None) -> str:
        cid = self._id("003")
        self.contacts[cid] = {
            "Id": cid,
            "FirstName": first,
            "LastName": last,
            "Name": f"{first} {last}",
            "Phone": phone,
            "MobilePhone": mobile,
            "OwnerId": None,
        }
        return cid

    def add_lead(self, phone: str, first: str, last: str, company: str = "Unknown") -> str:
        lid = self._id("00Q")
        self.leads[lid] = {
            "Id": lid,
            "Name": f"{first} {last}",
            "Phone": phone,
            "MobilePhone": None,
            "Company": company,
            "OwnerId": None,
            "IsConverted": False,
        }
        return lid

    def add_user(self, email: str, name: str = "User") -> str:
        uid = self._id("005")
        self.users[uid] = {"Id": uid, "Email": email, "Name": name, "IsActive": True}
        return uid

    def tasks_for(self, wildix_call_id: str) -> list[dict[str, Any]]:
        return [
            t
            for t in self.tasks.values()
            if wildix_call_id in CALL_ID.findall(t.get("Description") or "")
        ]

    def new_refresh_token(self) -> str:
        """The admin authorized the app again: a new refresh token."""
        self.refresh_token = self.tokens.new_refresh_token()
        return self.refresh_token

    # -- HTTP machinery --------------------------------------------------------------------------

    def _finish(self, request: Request[Any, Any, Any], resp: Response[Any]) -> Response[Any]:
        if self.daily.limit is not None:
            resp.headers["Sforce-Limit-Info"] = (
                f"api-usage={int(self.daily.used)}/{self.daily.limit}"
            )
        self.log.append((request.method, request.url.path, resp.status_code))
        return resp

    def _guard(self, request: Request[Any, Any, Any], version: str) -> Response[Any] | None:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or self.tokens.check(auth[7:]) is None:
            return errors(401, "INVALID_SESSION_ID", "Session expired or invalid")
        if version != self.api_version:
            return errors(404, "NOT_FOUND", "The requested resource does not exist")
        if not self.daily.spend():
            return errors(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
        return None

    async def _body(self, request: Request[Any, Any, Any]) -> Any:
        try:
            return json.loads(await request.body())
        except ValueError:
            return None

    # -- validation ------------------------------------------------------------------------------

    def _bad_task(self, body: Any, create: bool) -> Response[Any] | None:
        if not isinstance(body, dict):
            return errors(400, "JSON_PARSER_ERROR", "Unexpected parameter encountered")
        for name in body:
            if name not in TASK_FIELDS:
                return errors(
                    400, "INVALID_FIELD", f"No such column '{name}' on sobject of type Task"
                )
        if not create and "TaskSubtype" in body:
            return errors(
                400,
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                "Unable to create/update fields: TaskSubtype. Please check the security "
                "settings of this field and verify that it is read/write for your profile or "
                "permission set.",
                ["TaskSubtype"],
            )
        for name, allowed in PICKLISTS.items():
            if name in body and body[name] not in allowed:
                return errors(
                    400,
                    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                    f"bad value for restricted picklist field: {body[name]}",
                    [name],
                )
        seconds = body.get("CallDurationInSeconds", 0)
        if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds < 0:
            return errors(
                400, "JSON_PARSER_ERROR", f"Cannot deserialize instance of int from {seconds!r}"
            )
        if "ActivityDate" in body and not re.fullmatch(
            r"\d{4}-\d{2}-\d{2}", str(body["ActivityDate"])
        ):
            return errors(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of date")
        if len(str(body.get("Subject", ""))) > 255:
            return errors(400, "STRING_TOO_LONG", "Subject: data value too large", ["Subject"])
        who = body.get("WhoId")
        if who is not None and who not in self.contacts and who not in self.leads:
            return errors(
                400,
                "FIELD_INTEGRITY_EXCEPTION",
                f"Name ID: id value of incorrect type: {who}",
                ["WhoId"],
            )
        owner = body.get("OwnerId")
        if owner is not None and owner not in self.users:
            return errors(
                400,
                "FIELD_INTEGRITY_EXCEPTION",
                f"Assigned To ID: id value of incorrect type: {owner}",
                ["OwnerId"],
            )
        return None

    def _tables(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {
            "Task": self.tasks,
            "User": self.users,
            "Contact": self.contacts,
            "Lead": self.leads,
        }

    # -- the API ---------------------------------------------------------------------------------

    def _token(self, form: dict[str, str], base: str) -> tuple[dict[str, Any], int]:
        grant = form.get("grant_type", "")
        refused = None
        source = None
        if grant == "client_credentials":
            if (form.get("client_id"), form.get("client_secret")) != (
                self.client_id,
                self.client_secret,
            ):
                refused = ("invalid_client", "invalid client credentials")
            elif not self.client_credentials:
                refused = ("invalid_grant", "no client credentials user enabled")
        elif grant == JWT_GRANT:
            try:
                claims = jwt.decode(
                    form.get("assertion", ""),
                    self.public_key,
                    algorithms=["RS256"],
                    audience=["https://login.salesforce.com", "https://test.salesforce.com", base],
                    options={"require": ["iss", "sub", "aud", "exp"]},
                )
            except jwt.PyJWTError:
                refused = ("invalid_grant", "invalid assertion")
            else:
                if claims["iss"] != self.client_id:
                    refused = ("invalid_client_id", "client identifier invalid")
                elif claims["sub"] != self.username:
                    refused = ("invalid_grant", "user hasn't approved this consumer")
                elif claims["exp"] > time.time() + 300:
                    refused = ("invalid_grant", "invalid assertion")
        elif grant == "refresh_token":
            source = form.get("refresh_token")
            if (
                form.get("client_id") != self.client_id
                or form.get("client_secret", self.client_secret) != self.client_secret
            ):
                refused = ("invalid_client", "invalid client credentials")
            elif self.tokens.usable(source) is None:
                refused = ("invalid_grant", "expired access/refresh token")
        else:
            refused = ("unsupported_grant_type", "grant type not supported")
        self.tokens.requests.append((grant, refused[0] if refused else "ok"))
        if refused:
            return {"error": refused[0], "error_description": refused[1]}, 400
        return {
            "access_token": self.tokens.issue(source),
            "signature": "dGVzdHNpZ25hdHVyZQ==",
            "scope": "api refresh_token",
            "instance_url": base,
            "id": f"{base}/id/00D5g000004Pv2EEAS/005000000000001AAA",
            "token_type": "Bearer",
            "issued_at": str(int(time.time() * 1000)),
        }, 200

    def _app(self) -> Litestar:
        fake = self
        data = "/services/data/{version:str}"

        @post("/services/oauth2/token", status_code=200)
        async def token(request: Request[Any, Any, Any]) -> Response[Any]:
            form = dict(await request.form())
            body, status = fake._token(form, str(request.base_url).rstrip("/"))
            fake.log.append(("POST", request.url.path, status))
            return Response(body, status_code=status)

        @get(f"{data}/query")
        async def query(request: Request[Any, Any, Any]) -> Response[Any]:
            version = request.path_params["version"]
            if (denied := fake._guard(request, version)) is not None:
                return fake._finish(request, denied)
            rows = soql(request.query_params.get("q", ""), fake._tables())
            if isinstance(rows, Response):
                return fake._finish(request, rows)
            return fake._finish(
                request, Response({"totalSize": len(rows), "done": True, "records": rows})
            )

        @get(f"{data}/search")
        async def search(request: Request[Any, Any, Any]) -> Response[Any]:
            version = request.path_params["version"]
            if (denied := fake._guard(request, version)) is not None:
                return fake._finish(request, denied)
            found = sosl(request.query_params.get("q", ""), fake._tables())
            if isinstance(found, Response):
                return fake._finish(request, found)
            return fake._finish(request, Response({"searchRecords": found}))

        @post(f"{data}/sobjects/Task", status_code=201)
        async def create_task(request: Request[Any, Any, Any]) -> Response[Any]:
            version = request.path_params["version"]
            if (denied := fake._guard(request, version)) is not None:
                return fake._finish(request, denied)
            body = await fake._body(request)
            if (bad := fake._bad_task(body, create=True)) is not None:
                return fake._finish(request, bad)
            tid = fake._id("00T")
            fake.tasks[tid] = {
                "Id": tid,
                "Status": "Not Started",
                "Priority": "Normal",
                **body,
                "updates": 0,
            }
            if await fake.faults.after_persist():
                return fake._finish(
                    request, errors(500, "UNKNOWN_EXCEPTION", "An unexpected error occurred.")
                )
            return fake._finish(
                request, Response({"id": tid, "success": True, "errors": []}, status_code=201)
            )

        @patch(f"{data}/sobjects/Task/{{task_id:str}}", status_code=200)
        async def update_task(request: Request[Any, Any, Any]) -> Response[Any]:
            version, task_id = request.path_params["version"], request.path_params["task_id"]
            if (denied := fake._guard(request, version)) is not None:
                return fake._finish(request, denied)
            body = await fake._body(request)
            if (bad := fake._bad_task(body, create=False)) is not None:
                return fake._finish(request, bad)
            if task_id not in fake.tasks:
                return fake._finish(
                    request, errors(404, "NOT_FOUND", "The requested resource does not exist")
                )
            fake.tasks[task_id].update(body)
            fake.tasks[task_id]["updates"] += 1
            return fake._finish(request, Response(None, status_code=204))

        @post(f"{data}/sobjects/Contact", status_code=201)
        async def create_contact(request: Request[Any, Any, Any]) -> Response[Any]:
            version = request.path_params["version"]
            if (denied := fake._guard(request, version)) is not None:
                return fake._finish(request, denied)
            body = await fake._body(request)
            if not isinstance(body, dict) or not body.get("LastName"):
                return fake._finish(
                    request,
                    errors(
                        400,
                        "REQUIRED_FIELD_MISSING",
                        "Required fields are missing: [LastName]",
                        ["LastName"],
                    ),
                )
            cid = fake.add_contact(
                body.get("Phone", ""), body.get("FirstName", ""), body["LastName"]
            )
            return fake._finish(
                request, Response({"id": cid, "success": True, "errors": []}, status_code=201)
            )

        return Litestar(
            [token, query, search, create_task, update_task, create_contact], debug=False
        )
