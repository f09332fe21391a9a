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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from litestar import Litestar, Request, Response, get, post, put

from tests.fakes.server import Daily, Faults, Window

STATUSES = {2, 3, 4, 5}  # open, pending, resolved, closed
PRIORITIES = {1, 2, 3, 4}
SOURCES = {1, 2, 3, 5, 6, 7, 9, 10}  # 3: phone
TICKET_FIELDS = {
    "subject",
    "description",
    "status",
    "priority",
    "source",
    "requester_id",
    "email",
    "phone",
    "name",
    "responder_id",
    "group_id",
    "tags",
    "type",
    "custom_fields",
}
REQUESTER = ("requester_id", "email", "phone")
CLAUSE = re.compile(r"(\w+):'([^']*)'")
CALL_ID = re.compile(r"Wildix call (\S+)")
QUERY_MAX = 512


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _invalid(*errors: tuple[str, str, str]) -> Response[Any]:
    body = {
        "description": "Validation failed",
        "errors": [{"field": f, "message": m, "code": c} for f, m, c in errors],
    }
    return Response(body, status_code=400)


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

    def add_contact(self, phone: str, first: str, last: str, *, mobile: bool = False) -> str:
        cid = next(self._ids)
        self.contacts[cid] = {
            "id": cid,
            "name": f"{first} {last}",
            "email": None,
            "phone": None if mobile else phone,
            "mobile": phone if mobile else None,
            "active": False,
            "created_at": _now(),
        }
        return str(cid)

    def add_agent(self, email: str, name: str = "Agent") -> str:
        aid = next(self._ids)
        self.agents[aid] = {
            "id": aid,
            "available": True,
            "occasional": False,
            "ticket_scope": 1,
            "contact": {"name": name, "email": email, "active": True},
        }
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
            for v in map(self.view, self.tickets.values())
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

    def _guard(self, request: Request[Any, Any, Any], search: bool = False) -> Response[Any] | None:
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
                resp = Response(
                    {"message": "You have exceeded the limit of requests per minute"},
                    status_code=429,
                    headers=self._headers(),
                )
                resp.headers["retry-after"] = str(max(1, round(window.reset_in() + 0.5)))
                return resp
        return None

    def _finish(self, request: Request[Any, Any, Any], resp: Response[Any]) -> Response[Any]:
        resp.headers.update(self._headers())
        resp.status_code = resp.status_code or 200
        self.log.append((request.method, request.url.path, resp.status_code))
        return resp

    async def _json(self, request: Request[Any, Any, Any]) -> Any:
        try:
            return json.loads(await request.body())
        except ValueError:
            return None

    def _ticket_errors(self, body: Any, creating: bool) -> list[tuple[str, str, str]]:
        if not isinstance(body, dict):
            return [("body", "It should be a JSON object", "datatype_mismatch")]
        errors = [
            (k, "Unexpected/invalid field in request", "invalid_field")
            for k in body
            if k not in TICKET_FIELDS
        ]
        if creating:
            if not any(body.get(k) for k in REQUESTER):
                errors.append(
                    (
                        "requester_id",
                        "Please fill at least 1 of email, phone, requester_id fields",
                        "missing_field",
                    )
                )
            for key in ("subject", "description"):
                if not isinstance(body.get(key), str) or not body[key]:
                    errors.append((key, "It should be a/an String", "missing_field"))
        if "requester_id" in body and body["requester_id"] not in self.contacts:
            errors.append(
                (
                    "requester_id",
                    "There is no contact matching the given requester_id",
                    "invalid_value",
                )
            )
        for key, allowed in (("status", STATUSES), ("priority", PRIORITIES), ("source", SOURCES)):
            if key in body and body[key] not in allowed:
                values = ",".join(map(str, sorted(allowed)))
                errors.append(
                    (key, f"It should be one of these values: '{values}'", "invalid_value")
                )
        if "responder_id" in body and body["responder_id"] not in self.agents:
            errors.append(
                (
                    "responder_id",
                    "There is no agent matching the given responder_id",
                    "invalid_value",
                )
            )
        if "group_id" in body and body["group_id"] not in self.groups:
            errors.append(
                ("group_id", "There is no group matching the given group_id", "invalid_value")
            )
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
        cid = next(self._ids)
        self.contacts[cid] = {
            "id": cid,
            "name": body.get("name") or body.get("email") or body.get("phone"),
            "email": body.get("email"),
            "phone": body.get("phone"),
            "mobile": None,
            "active": False,
            "created_at": _now(),
        }
        return cid

    def _matches(self, query: str) -> list[dict[str, Any]] | None:
        """``"phone:'…' OR mobile:'…'"``: exact values, as Freshdesk's filter API compares them."""
        if len(query) < 2 or not (query.startswith('"') and query.endswith('"')):
            return None
        inner = query[1:-1]
        if len(inner) > QUERY_MAX:
            return None
        parts = re.split(r" (?:OR|AND) ", inner)
        clauses = [CLAUSE.fullmatch(p.strip("()")) for p in parts]
        if not all(clauses) or any(c[1] not in ("phone", "mobile", "email") for c in clauses):  # type: ignore[index]
            return None
        wanted = [(c[1], c[2]) for c in clauses]  # type: ignore[index]
        return [c for c in self.contacts.values() if any(c.get(f) == v for f, v in wanted if v)]

    # -- the API -------------------------------------------------------------------------------

    def _app(self) -> Litestar:
        fake = self

        @get("/api/v2/agents/me")
        async def me(request: Request[Any, Any, Any]) -> Response[Any]:
            if (denied := fake._guard(request)) is not None:
                return fake._finish(request, denied)
            return fake._finish(request, Response(fake.agents[int(fake.me)]))

        @get("/api/v2/agents")
        async def agents(request: Request[Any, Any, Any]) -> Response[Any]:
            if (denied := fake._guard(request)) is not None:
                return fake._finish(request, denied)
            email = request.query_params.get("email", "").lower()
            found = [a for a in fake.agents.values() if not email or a["contact"]["email"] == email]
            return fake._finish(request, Response(found))

        @get("/api/v2/search/contacts")
        async def search_contacts(request: Request[Any, Any, Any]) -> Response[Any]:
            if (denied := fake._guard(request, search=True)) is not None:
                return fake._finish(request, denied)
            found = fake._matches(request.query_params.get("query", ""))
            if found is None:
                problem = (
                    "query",
                    "Invalid query: wrap it in double quotes, field:'value'",
                    "invalid_value",
                )
                return fake._finish(request, _invalid(problem))
            return fake._finish(request, Response({"results": found[:30], "total": len(found)}))

        @post("/api/v2/contacts")
        async def create_contact(request: Request[Any, Any, Any]) -> Response[Any]:
            if (denied := fake._guard(request)) is not None:
                return fake._finish(request, denied)
            body = await fake._json(request)
            if not isinstance(body, dict) or not body.get("name"):
                return fake._finish(
                    request, _invalid(("name", "It should be a/an String", "missing_field"))
                )
            if not any(body.get(k) for k in ("email", "phone", "mobile")):
                problem = (
                    "email",
                    "Please fill at least 1 of email, mobile, phone fields",
                    "missing_field",
                )
                return fake._finish(request, _invalid(problem))
            cid = next(fake._ids)
            fake.contacts[cid] = {
                "id": cid,
                "name": body["name"],
                "email": body.get("email"),
                "phone": body.get("phone"),
                "mobile": body.get("mobile"),
                "active": False,
                "created_at": _now(),
            }
            return fake._finish(request, Response(fake.contacts[cid], status_code=201))

        @post("/api/v2/tickets")
        async def create_ticket(request: Request[Any, Any, Any]) -> Response[Any]:
            if (denied := fake._guard(request)) is not None:
                return fake._finish(request, denied)
            body = await fake._json(request)
            if errors := fake._ticket_errors(body, creating=True):
                return fake._finish(request, _invalid(*errors))
            tid = next(fake._ids)
            now = _now()
            ticket = {
                "id": tid,
                "subject": body["subject"],
                "description": body["description"],
                "description_text": re.sub(r"<[^>]+>", "", body["description"]),
                "status": body.get("status", 2),
                "priority": body.get("priority", 1),
                "source": body.get("source", 2),
                "requester_id": fake._requester(body),
                "responder_id": body.get("responder_id"),
                "group_id": body.get("group_id"),
                "tags": body.get("tags", []),
                "type": body.get("type"),
                "created_at": now,
                "updated_at": now,
                "updates": 0,
            }
            fake.tickets[tid] = ticket
            if await fake.faults.after_persist():
                return fake._finish(request, Response({"code": "internal_error"}, status_code=500))
            return fake._finish(request, Response(ticket, status_code=201))

        @put("/api/v2/tickets/{ticket_id:int}")
        async def update_ticket(request: Request[Any, Any, Any]) -> Response[Any]:
            ticket_id = request.path_params["ticket_id"]
            if (denied := fake._guard(request)) is not None:
                return fake._finish(request, denied)
            ticket = fake.tickets.get(ticket_id)
            if ticket is None:
                return fake._finish(request, Response(None, status_code=404))
            body = await fake._json(request)
            if errors := fake._ticket_errors(body, creating=False):
                return fake._finish(request, _invalid(*errors))
            ticket.update(body, updated_at=_now(), updates=ticket["updates"] + 1)
            if "description" in body:
                ticket["description_text"] = re.sub(r"<[^>]+>", "", body["description"])
            return fake._finish(request, Response(ticket))

        @get("/api/v2/tickets")
        async def list_tickets(request: Request[Any, Any, Any]) -> Response[Any]:
            if (denied := fake._guard(request)) is not None:
                return fake._finish(request, denied)
            q = request.query_params
            per_page, page = int(q.get("per_page", 30)), int(q.get("page", 1))
            if per_page > 100 or page < 1:
                problem = (
                    "per_page",
                    "It should be a Positive Integer less than or equal to 100",
                    "invalid_value",
                )
                return fake._finish(request, _invalid(problem))
            found = list(fake.tickets.values())
            if "requester_id" in q:
                found = [t for t in found if str(t["requester_id"]) == q["requester_id"]]
            if "email" in q:
                found = [
                    t for t in found if fake.contacts[t["requester_id"]]["email"] == q["email"]
                ]
            if "updated_since" in q:
                found = [t for t in found if t["updated_at"] >= q["updated_since"]]
            key = q.get("order_by", "created_at")
            found.sort(
                key=lambda t: (t[key], t["id"]), reverse=q.get("order_type", "desc") == "desc"
            )
            listed = [{k: v for k, v in t.items() if k != "description"} for t in found]
            return fake._finish(request, Response(listed[(page - 1) * per_page : page * per_page]))

        @post("/api/v2/tickets/{ticket_id:int}/notes")
        async def add_note(request: Request[Any, Any, Any]) -> Response[Any]:
            ticket_id = request.path_params["ticket_id"]
            if (denied := fake._guard(request)) is not None:
                return fake._finish(request, denied)
            if ticket_id not in fake.tickets:
                return fake._finish(request, Response(None, status_code=404))
            body = await fake._json(request)
            if (
                not isinstance(body, dict)
                or not isinstance(body.get("body"), str)
                or not body["body"]
            ):
                return fake._finish(
                    request, _invalid(("body", "It should be a/an String", "missing_field"))
                )
            unexpected = [
                k for k in body if k not in ("body", "private", "incoming", "notify_emails")
            ]
            if unexpected:
                return fake._finish(
                    request,
                    _invalid(
                        *[
                            (k, "Unexpected/invalid field in request", "invalid_field")
                            for k in unexpected
                        ]
                    ),
                )
            nid = next(fake._ids)
            fake.notes[nid] = {
                "id": nid,
                "ticket_id": ticket_id,
                "body": body["body"],
                "body_text": re.sub(r"<[^>]+>", "", body["body"]),
                "private": body.get("private", True),
                "incoming": False,
                "user_id": int(fake.me),
                "created_at": _now(),
                "updates": 0,
            }
            if await fake.note_faults.after_persist():
                return fake._finish(request, Response({"code": "internal_error"}, status_code=500))
            return fake._finish(request, Response(fake.notes[nid], status_code=201))

        @get("/api/v2/tickets/{ticket_id:int}/conversations")
        async def conversations(request: Request[Any, Any, Any]) -> Response[Any]:
            ticket_id = request.path_params["ticket_id"]
            if (denied := fake._guard(request)) is not None:
                return fake._finish(request, denied)
            if ticket_id not in fake.tickets:
                return fake._finish(request, Response(None, status_code=404))
            found = [n for n in fake.notes.values() if n["ticket_id"] == ticket_id]
            return fake._finish(
                request, Response(found[: int(request.query_params.get("per_page", 30))])
            )

        @put("/api/v2/conversations/{note_id:int}")
        async def update_note(request: Request[Any, Any, Any]) -> Response[Any]:
            note_id = request.path_params["note_id"]
            if (denied := fake._guard(request)) is not None:
                return fake._finish(request, denied)
            note = fake.notes.get(note_id)
            if note is None:
                return fake._finish(request, Response(None, status_code=404))
            body = await fake._json(request)
            if (
                not isinstance(body, dict)
                or set(body) != {"body"}
                or not isinstance(body["body"], str)
            ):
                problem = ("body", "Only the body of a note can be updated", "invalid_field")
                return fake._finish(request, _invalid(problem))
            note.update(
                body=body["body"],
                body_text=re.sub(r"<[^>]+>", "", body["body"]),
                updates=note["updates"] + 1,
            )
            return fake._finish(request, Response(note))

        return Litestar(
            [
                me,
                agents,
                search_contacts,
                create_contact,
                create_ticket,
                update_ticket,
                list_tickets,
                add_note,
                conversations,
                update_note,
            ],
            debug=False,
        )
