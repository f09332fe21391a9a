"""A loopback Pipedrive: call logs (create, list; no update), persons (v2 search, v1 create),
users, with Pipedrive's auth (x-api-token header, api_token query, OAuth bearer), its error
envelope, the burst window per token with x-ratelimit-* headers, the search limit and a daily
token budget. Records live in memory for tests. Shapes: reference/crm-apis.md §4 and §9."""

from __future__ import annotations

import itertools
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from litestar import Litestar, Request, Response, get, post

from tests.fakes.server import Daily, Faults, Window

OUTCOMES = {"connected", "no_answer", "left_message", "left_voicemail", "wrong_number", "busy"}
TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
REQUIRED = ("outcome", "to_phone_number", "start_time", "end_time")
COST = {("POST", "callLogs"): 10, ("GET", "callLogs"): 20, ("GET", "search"): 40}
CALL_ID = re.compile(r"Wildix call (\S+)")


def _error(status: int, error: str, info: str = "", **extra: Any) -> Response[Any]:
    body = {
        "success": False,
        "error": error,
        "error_info": info or "Please check the docs",
        "data": None,
        "additional_data": None,
        **extra,
    }
    return Response(body, status_code=status)


@dataclass
class FakePipedrive:
    api_token: str = "0123456789abcdef0123456789abcdef01234567"
    bearer: str | None = None
    limit: int = 20  # per 2 s per token
    interval: float = 2.0
    search_limit: int = 10
    daily_budget: float | None = None
    daily_reset_at: float | None = None
    persons: dict[int, dict[str, Any]] = field(default_factory=dict)
    users: list[dict[str, Any]] = field(default_factory=list)
    call_logs: dict[str, dict[str, Any]] = field(default_factory=dict)
    log: list[tuple[str, str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.burst = Window(self.limit, self.interval)
        self.search = Window(self.search_limit, self.interval)
        self.daily = Daily(self.daily_budget, self.daily_reset_at)
        self.faults = Faults()
        self._ids = itertools.count(101)
        if not self.users:
            self.add_user("api@example.org", "API User")
        self.app = self._app()

    def add_person(self, name: str, *phones: str, owner: int | None = None) -> int:
        pid = next(self._ids)
        self.persons[pid] = {"id": pid, "name": name, "phones": list(phones), "owner": owner}
        return pid

    def add_user(self, email: str, name: str = "User") -> int:
        uid = 12345 + len(self.users)
        self.users.append({"id": uid, "name": name, "email": email, "active_flag": True})
        return uid

    def logs_for(self, wildix_call_id: str) -> list[dict[str, Any]]:
        return [
            c
            for c in self.call_logs.values()
            if wildix_call_id in CALL_ID.findall(c.get("note") or "")
        ]

    @property
    def rejected_for_rate(self) -> int:
        return self.burst.rejected + self.search.rejected + self.daily.rejected

    # -- machinery -------------------------------------------------------------------------------

    def _headers(self, window: Window) -> dict[str, str]:
        headers = {
            "x-ratelimit-limit": str(window.limit),
            "x-ratelimit-remaining": str(window.remaining),
            "x-ratelimit-reset": str(max(1, round(window.reset_in()))),
        }
        if self.daily.limit is not None:
            headers["x-daily-requests-left"] = str(int(self.daily.remaining or 0))
        return headers

    def _guard(self, request: Request[Any, Any, Any], kind: str) -> Response[Any] | None:
        token = request.headers.get("x-api-token") or request.query_params.get("api_token")
        bearer = request.headers.get("authorization")
        if token != self.api_token and not (self.bearer and bearer == f"Bearer {self.bearer}"):
            return _error(401, "unauthorized access", errorCode=401)
        window = self.search if kind == "search" else self.burst
        if not window.allow():
            resp = _error(
                429, "Request over limit", "Rate limit reached; retry after the window resets"
            )
            resp.headers.update(self._headers(window))
            resp.headers["retry-after"] = str(max(1, round(window.reset_in() + 0.5)))
            return resp
        if not self.daily.spend(COST.get((request.method, kind), 2)):
            resp = _error(
                429, "Daily rate limit exceeded", "Your company's daily API token budget is used up"
            )
            resp.headers["x-daily-requests-left"] = "0"
            return resp
        return None

    def _ok(self, data: Any, window: Window, additional: Any = None) -> Response[Any]:
        body = {"success": True, "data": data, "additional_data": additional}
        return Response(body, status_code=200, headers=self._headers(window))

    def _finish(self, request: Request[Any, Any, Any], resp: Response[Any]) -> Response[Any]:
        self.log.append((request.method, request.url.path, resp.status_code))
        return resp

    def _invalid_log(self, body: Any) -> str | None:
        if not isinstance(body, dict):
            return "Request body must be a JSON object"
        missing = [k for k in REQUIRED if not body.get(k)]
        if missing:
            return f"Missing required fields: {', '.join(missing)}"
        if body["outcome"] not in OUTCOMES:
            return f"outcome must be one of {sorted(OUTCOMES)}"
        for key in ("start_time", "end_time"):
            if not isinstance(body[key], str) or not TIME.match(body[key]):
                return f"{key} must be in UTC, format YYYY-MM-DD HH:MM:SS"
        if body["end_time"] < body["start_time"]:
            return "end_time must not be before start_time"
        if "duration" in body and not (
            isinstance(body["duration"], str) and body["duration"].isdigit()
        ):
            return "duration must be a string of seconds"
        if "person_id" in body and body["person_id"] not in self.persons:
            return f"Person {body['person_id']} not found"
        if "user_id" in body and all(u["id"] != body["user_id"] for u in self.users):
            return f"User {body['user_id']} not found"
        return None

    # -- the API ---------------------------------------------------------------------------------

    def _app(self) -> Litestar:
        fake = self

        @post("/v1/callLogs", status_code=200)
        async def create_log(request: Request[Any, Any, Any]) -> Response[Any]:
            if (denied := fake._guard(request, "callLogs")) is not None:
                return fake._finish(request, denied)
            try:
                body = json.loads(await request.body())
            except ValueError:
                body = None
            if (problem := fake._invalid_log(body)) is not None:
                return fake._finish(request, _error(400, problem))
            log_id = uuid.uuid4().hex
            data = {
                "id": log_id,
                "has_recording": False,
                "company_id": 999,
                "user_id": body.get("user_id", fake.users[0]["id"]),
                "activity_id": None,
                "subject": body.get("subject"),
                "duration": body.get("duration"),
                "outcome": body["outcome"],
                "from_phone_number": body.get("from_phone_number"),
                "to_phone_number": body["to_phone_number"],
                "start_time": body["start_time"],
                "end_time": body["end_time"],
                "person_id": body.get("person_id"),
                "org_id": None,
                "deal_id": None,
                "lead_id": None,
                "note": body.get("note"),
            }
            fake.call_logs = {log_id: data, **fake.call_logs}  # newest first
            if await fake.faults.after_persist():
                return fake._finish(request, _error(500, "Internal server error"))
            return fake._finish(request, fake._ok(data, fake.burst))

        @get("/v1/callLogs")
        async def list_logs(request: Request[Any, Any, Any]) -> Response[Any]:
            if (denied := fake._guard(request, "callLogs")) is not None:
                return fake._finish(request, denied)
            start = int(request.query_params.get("start", 0))
            limit = min(int(request.query_params.get("limit", 50)), 50)
            logs = list(fake.call_logs.values())
            page = logs[start : start + limit]
            more = start + limit < len(logs)
            pagination = {
                "start": start,
                "limit": limit,
                "more_items_in_collection": more,
                **({"next_start": start + limit} if more else {}),
            }
            return fake._finish(request, fake._ok(page, fake.burst, {"pagination": pagination}))

        @get("/api/v2/persons/search")
        async def search_persons(request: Request[Any, Any, Any]) -> Response[Any]:
            if (denied := fake._guard(request, "search")) is not None:
                return fake._finish(request, denied)
            q = request.query_params
            term, exact = q.get("term", ""), q.get("exact_match") == "true"
            if len(term) < (1 if exact else 2) or q.get("fields", "phone") != "phone":
                return fake._finish(request, _error(400, "term too short or fields unsupported"))
            digits = re.sub(r"\D", "", term)
            items = []
            for person in fake.persons.values():
                phones = person["phones"]
                hit = (
                    (term in phones)
                    if exact
                    else any(digits in re.sub(r"\D", "", p) for p in phones)
                )
                if hit:
                    item = {
                        "id": person["id"],
                        "type": "person",
                        "name": person["name"],
                        "phones": phones,
                        "emails": [],
                        "visible_to": 3,
                        "owner": {"id": person["owner"]} if person["owner"] else None,
                        "organization": None,
                        "custom_fields": [],
                        "notes": [],
                    }
                    items.append({"result_score": 1.0 if exact else 0.5, "item": item})
            data = {"items": items[: int(q.get("limit", 100))]}
            return fake._finish(request, fake._ok(data, fake.search, {"next_cursor": None}))

        @post("/v1/persons", status_code=200)
        async def create_person(request: Request[Any, Any, Any]) -> Response[Any]:
            if (denied := fake._guard(request, "persons")) is not None:
                return fake._finish(request, denied)
            body = json.loads(await request.body())
            if not body.get("name"):
                return fake._finish(request, _error(400, "Name must be given."))
            phones = [p["value"] if isinstance(p, dict) else p for p in body.get("phone") or []]
            pid = fake.add_person(body["name"], *phones)
            return fake._finish(request, fake._ok(fake.persons[pid], fake.burst))

        @get("/v1/users/find")
        async def find_users(request: Request[Any, Any, Any]) -> Response[Any]:
            if (denied := fake._guard(request, "users")) is not None:
                return fake._finish(request, denied)
            term = request.query_params.get("term", "").lower()
            found = [u for u in fake.users if term in u["email"].lower()]
            return fake._finish(request, fake._ok(found or None, fake.burst))

        @get("/v1/users/me")
        async def me(request: Request[Any, Any, Any]) -> Response[Any]:
            if (denied := fake._guard(request, "users")) is not None:
                return fake._finish(request, denied)
            return fake._finish(request, fake._ok(fake.users[0], fake.burst))

        return Litestar(
            [create_log, list_logs, search_persons, create_person, find_users, me], debug=False
        )
