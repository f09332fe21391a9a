"""A loopback Freshdesk (API v2): tickets (create, update, list with filters), private notes and
their update, contacts (create, filter-search), agents, with Freshdesk's auth (the API key as the
basic-auth user), its error bodies (``Validation failed`` with per-field errors, 401
``invalid_credentials``), the account's per-minute limit and the search limit, answered with
``X-RateLimit-*`` headers and a 429 with ``Retry-After``. Records live in memory for tests."""

from __future__ import annotations

import base64
import itertools
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from litestar import Litestar, Request, Response, get, post, put

from tests.fakes.server import Daily, Faults, Window

CHOICES = {  # open, pending, resolved, closed; low … urgent; 3: phone
    "status": {2, 3, 4, 5},
    "priority": {1, 2, 3, 4},
    "source": {1, 2, 3, 5, 6, 7, 9, 10},
}
TICKET_FIELDS = {
    *CHOICES,
    *("subject", "description", "requester_id", "email", "phone", "name", "responder_id"),
    *("group_id", "tags", "type", "custom_fields"),
}
NOTE_FIELDS = {"body", "private", "incoming", "notify_emails"}
REQUESTER = ("requester_id", "email", "phone")
CLAUSE = re.compile(r"(phone|mobile|email):'([^']*)'")
CALL_ID = re.compile(r"Wildix call (\S+)")
QUERY_MAX = 512
Handler = Callable[[Request[Any, Any, Any]], Awaitable[Response[Any]]]
Problem = tuple[str, str, str]  # field, message, code


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _text(html: str) -> str:
    return re.sub(r"<[^>]+>", "", html)


def _invalid(*errors: Problem) -> Response[Any]:
    body = {
        "description": "Validation failed",
        "errors": [{"field": f, "message": m, "code": c} for f, m, c in errors],
    }
    return Response(body, status_code=400)


def _not_found() -> Response[Any]:
    return Response(None, status_code=404)


@dataclass
class FakeFreshdesk:
    api_key: str = "fd0123456789abcdefKEY"
    limit: int = 200  # requests per minute per account (Growth)
    interval: float = 60.0
    search_limit: int = 20
    contacts: dict[int, dict[str, Any]] = field(default_factory=dict)
    agents: dict[int, dict[str, Any]] = field(default_factory=dict)
    groups: dict[int, str] = field(default_factory=lambda: {7001: "Calls"})
    tickets: dict[int, dict[str, Any]] = field(default_factory=dict)
    notes: dict[int, dict[str, Any]] = field(default_factory=dict)
    log: list[tuple[str, str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.burst = Window(self.limit, self.interval)
        self.search = Window(self.search_limit, self.interval)
        self.daily = Daily(None)  # Freshdesk has no daily quota: never refuses
        self.faults = Faults()  # on a ticket's create
        self.note_faults = Faults()  # on a note's create
        self._ids = itertools.count(1001)
        self.me = self.add_agent("api@example.org", "API Agent")
        self.app = self._app()

    # -- seeding and reading -------------------------------------------------------------------

    def _contact(self, name: str, **fields: str | None) -> int:
        cid = next(self._ids)
        self.contacts[cid] = {"id": cid, "name": name, "active": False, "created_at": _now()}
        self.contacts[cid].update({k: fields.get(k) for k in ("email", "phone", "mobile")})
        return cid

    def add_contact(self, phone: str, first: str, last: str, *, mobile: bool = False) -> str:
        return str(self._contact(f"{first} {last}", **{"mobile" if mobile else "phone": phone}))

    def add_agent(self, email: str, name: str = "Agent") -> str:
        aid = next(self._ids)
        contact = {"name": name, "email": email, "active": True}
        self.agents[aid] = {"id": aid, "available": True, "occasional": False, "contact": contact}
        return str(aid)

    def view(self, ticket: dict[str, Any]) -> dict[str, Any]:
        """A ticket as ``GET /tickets/{id}?include=conversations,requester`` shows it."""
        requester = self.contacts[ticket["requester_id"]]
        return {
            **ticket,
            "requester": {k: requester[k] for k in ("id", "name", "email", "phone", "mobile")},
            "conversations": [n for n in self.notes.values() if n["ticket_id"] == ticket["id"]],
        }

    def tickets_for(self, wildix_call_id: str) -> list[dict[str, Any]]:
        return [
            v
            for v in self.all_tickets()
            if any(wildix_call_id in CALL_ID.findall(n["body"]) for n in v["conversations"])
        ]

    def all_tickets(self) -> list[dict[str, Any]]:
        return [self.view(t) for t in self.tickets.values()]

    @property
    def rejected_for_rate(self) -> int:
        return self.burst.rejected + self.search.rejected

    # -- machinery -----------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-total": str(self.burst.limit),
            "x-ratelimit-remaining": str(self.burst.remaining),
            "x-ratelimit-used-currentrequest": "1",
        }

    def _guard(self, request: Request[Any, Any, Any], search: bool) -> Response[Any] | None:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        try:
            user = base64.b64decode(encoded).decode().partition(":")[0]
        except ValueError:
            user = ""
        if scheme.lower() != "basic" or user != self.api_key:
            body = {
                "code": "invalid_credentials",
                "message": "You have to be logged in to perform this action.",
            }
            return Response(body, status_code=401)
        for window in (self.burst, self.search) if search else (self.burst,):
            if not window.allow():
                body = {"message": "You have exceeded the limit of requests per minute"}
                wait = str(max(1, round(window.reset_in() + 0.5)))
                return Response(body, status_code=429, headers={"retry-after": wait})
        return None

    def _route(self, handler: Handler, search: bool = False) -> Handler:
        """Auth and limits first, then the endpoint; every answer has the limit headers."""

        async def endpoint(request: Request[Any, Any, Any]) -> Response[Any]:
            resp = self._guard(request, search) or await handler(request)
            resp.headers.update(self._headers())
            resp.status_code = resp.status_code or 200
            self.log.append((request.method, request.url.path, resp.status_code))
            return resp

        endpoint.__name__ = handler.__name__
        return endpoint

    @staticmethod
    async def _json(request: Request[Any, Any, Any]) -> Any:
        try:
            return json.loads(await request.body())
        except ValueError:
            return None

    def _ticket_errors(self, body: Any, creating: bool) -> list[Problem]:
        if not isinstance(body, dict):
            return [("body", "It should be a JSON object", "datatype_mismatch")]
        errors = [
            (k, "Unexpected/invalid field in request", "invalid_field")
            for k in body
            if k not in TICKET_FIELDS
        ]
        if creating and not any(body.get(k) for k in REQUESTER):
            message = "Please fill at least 1 of email, phone, requester_id fields"
            errors.append(("requester_id", message, "missing_field"))
        for key in ("subject", "description"):
            if (creating or key in body) and not (isinstance(body.get(key), str) and body[key]):
                errors.append((key, "It should be a/an String", "missing_field"))
        for key, allowed in CHOICES.items():
            if key in body and body[key] not in allowed:
                values = ",".join(map(str, sorted(allowed)))
                message = f"It should be one of these values: '{values}'"
                errors.append((key, message, "invalid_value"))
        for key, known, what in (
            ("requester_id", self.contacts, "contact"),
            ("responder_id", self.agents, "agent"),
            ("group_id", self.groups, "group"),
        ):
            if key in body and body[key] not in known:
                message = f"There is no {what} matching the given {key}"
                errors.append((key, message, "invalid_value"))
        tags = body.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            errors.append(("tags", "It should be an Array of String", "datatype_mismatch"))
        return errors

    def _requester(self, body: dict[str, Any]) -> int:
        """Freshdesk adds a contact for a requester email or phone it does not know."""
        if "requester_id" in body:
            return int(body["requester_id"])
        for contact in self.contacts.values():
            if body.get("email") and contact["email"] == body["email"]:
                return int(contact["id"])
        name = body.get("name") or body.get("email") or body.get("phone")
        return self._contact(name, email=body.get("email"), phone=body.get("phone"))

    def _matches(self, query: str) -> list[dict[str, Any]] | None:
        """``"phone:'…' OR mobile:'…'"``: exact values, as Freshdesk's filter API compares them."""
        if len(query) < 2 or not (query.startswith('"') and query.endswith('"')):
            return None
        inner = query[1:-1]
        clauses = [CLAUSE.fullmatch(p.strip("()")) for p in re.split(r" (?:OR|AND) ", inner)]
        if len(inner) > QUERY_MAX or not all(clauses):
            return None
        wanted = [(c[1], c[2]) for c in clauses if c]
        return [c for c in self.contacts.values() if any(c.get(f) == v for f, v in wanted if v)]

    # -- the API -------------------------------------------------------------------------------

    async def agents_me(self, request: Request[Any, Any, Any]) -> Response[Any]:
        return Response(self.agents[int(self.me)])

    async def list_agents(self, request: Request[Any, Any, Any]) -> Response[Any]:
        email = request.query_params.get("email", "").lower()
        return Response(
            [a for a in self.agents.values() if not email or a["contact"]["email"] == email]
        )

    async def search_contacts(self, request: Request[Any, Any, Any]) -> Response[Any]:
        found = self._matches(request.query_params.get("query", ""))
        if found is None:
            message = "Invalid query: wrap it in double quotes, at most 512 characters"
            return _invalid(("query", message, "invalid_value"))
        return Response({"results": found[:30], "total": len(found)})

    async def create_contact(self, request: Request[Any, Any, Any]) -> Response[Any]:
        body = await self._json(request)
        if not isinstance(body, dict) or not body.get("name"):
            return _invalid(("name", "It should be a/an String", "missing_field"))
        if not any(body.get(k) for k in ("email", "phone", "mobile")):
            message = "Please fill at least 1 of email, mobile, phone fields"
            return _invalid(("email", message, "missing_field"))
        cid = self._contact(body["name"], **{k: body.get(k) for k in ("email", "phone", "mobile")})
        return Response(self.contacts[cid], status_code=201)

    async def create_ticket(self, request: Request[Any, Any, Any]) -> Response[Any]:
        body = await self._json(request)
        if errors := self._ticket_errors(body, creating=True):
            return _invalid(*errors)
        tid = next(self._ids)
        now = _now()
        self.tickets[tid] = ticket = {
            "id": tid,
            "subject": body["subject"],
            "description": body["description"],
            "description_text": _text(body["description"]),
            "status": body.get("status", 2),
            "priority": body.get("priority", 1),
            "source": body.get("source", 2),
            "requester_id": self._requester(body),
            "responder_id": body.get("responder_id"),
            "group_id": body.get("group_id"),
            "tags": body.get("tags", []),
            "type": body.get("type"),
            "created_at": now,
            "updated_at": now,
            "updates": 0,
        }
        if await self.faults.after_persist():
            return Response({"code": "internal_error"}, status_code=500)
        return Response(ticket, status_code=201)

    async def update_ticket(self, request: Request[Any, Any, Any]) -> Response[Any]:
        ticket = self.tickets.get(request.path_params["ticket_id"])
        if ticket is None:
            return _not_found()
        body = await self._json(request)
        if errors := self._ticket_errors(body, creating=False):
            return _invalid(*errors)
        ticket.update(body, updated_at=_now(), updates=ticket["updates"] + 1)
        ticket["description_text"] = _text(ticket["description"])
        return Response(ticket)

    async def list_tickets(self, request: Request[Any, Any, Any]) -> Response[Any]:
        q = request.query_params
        per_page, page = int(q.get("per_page", 30)), int(q.get("page", 1))
        if not 0 < per_page <= 100 or page < 1:
            message = "It should be a Positive Integer less than or equal to 100"
            return _invalid(("per_page", message, "invalid_value"))
        found = list(self.tickets.values())
        if "requester_id" in q:
            found = [t for t in found if str(t["requester_id"]) == q["requester_id"]]
        if "email" in q:
            found = [t for t in found if self.contacts[t["requester_id"]]["email"] == q["email"]]
        if "updated_since" in q:
            found = [t for t in found if t["updated_at"] >= q["updated_since"]]
        key, desc = q.get("order_by", "created_at"), q.get("order_type", "desc") == "desc"
        found.sort(key=lambda t: (t[key], t["id"]), reverse=desc)
        listed = [{k: v for k, v in t.items() if k != "description"} for t in found]
        return Response(listed[(page - 1) * per_page : page * per_page])

    async def add_note(self, request: Request[Any, Any, Any]) -> Response[Any]:
        ticket_id = request.path_params["ticket_id"]
        if ticket_id not in self.tickets:
            return _not_found()
        body = await self._json(request)
        if not isinstance(body, dict) or not (isinstance(body.get("body"), str) and body["body"]):
            return _invalid(("body", "It should be a/an String", "missing_field"))
        if unexpected := [k for k in body if k not in NOTE_FIELDS]:
            return _invalid(
                *[(k, "Unexpected/invalid field in request", "invalid_field") for k in unexpected]
            )
        nid = next(self._ids)
        self.notes[nid] = {
            "id": nid,
            "ticket_id": ticket_id,
            "body": body["body"],
            "body_text": _text(body["body"]),
            "private": body.get("private", True),
            "incoming": False,
            "user_id": int(self.me),
            "created_at": _now(),
            "updates": 0,
        }
        if await self.note_faults.after_persist():
            return Response({"code": "internal_error"}, status_code=500)
        return Response(self.notes[nid], status_code=201)

    async def conversations(self, request: Request[Any, Any, Any]) -> Response[Any]:
        ticket_id = request.path_params["ticket_id"]
        if ticket_id not in self.tickets:
            return _not_found()
        found = [n for n in self.notes.values() if n["ticket_id"] == ticket_id]
        return Response(found[: int(request.query_params.get("per_page", 30))])

    async def update_note(self, request: Request[Any, Any, Any]) -> Response[Any]:
        note = self.notes.get(request.path_params["note_id"])
        if note is None:
            return _not_found()
        body = await self._json(request)
        if not isinstance(body, dict) or set(body) != {"body"} or not isinstance(body["body"], str):
            return _invalid(("body", "Only the body of a note can be updated", "invalid_field"))
        note.update(body=body["body"], body_text=_text(body["body"]), updates=note["updates"] + 1)
        return Response(note)

    def _app(self) -> Litestar:
        tickets, ticket = "/api/v2/tickets", "/api/v2/tickets/{ticket_id:int}"
        return Litestar(
            [
                get("/api/v2/agents/me")(self._route(self.agents_me)),
                get("/api/v2/agents")(self._route(self.list_agents)),
                get("/api/v2/search/contacts")(self._route(self.search_contacts, search=True)),
                post("/api/v2/contacts")(self._route(self.create_contact)),
                post(tickets)(self._route(self.create_ticket)),
                get(tickets)(self._route(self.list_tickets)),
                put(ticket)(self._route(self.update_ticket)),
                post(f"{ticket}/notes")(self._route(self.add_note)),
                get(f"{ticket}/conversations")(self._route(self.conversations)),
                put("/api/v2/conversations/{note_id:int}")(self._route(self.update_note)),
            ],
            debug=False,
        )
