"""A loopback Zendesk Support: tickets (create with a comment and a voice comment, update, list by
external_id), users (create, Users search, me), the Search API for end users by phone, with
Zendesk's auth (basic ``{email}/token:{api_token}`` or an OAuth bearer token), its error bodies
(``{"error", "description"}``; 422 ``RecordInvalid`` with ``details``), the account's per-minute
limit and the endpoints' own (Search, Update Ticket, List Tickets: ``Zendesk-RateLimit-*``), 429
with ``Retry-After`` and the ``ratelimit-*`` headers. Records live in memory for tests. Shapes:
docs/crm.md (`zendesk`) and the Zendesk API reference."""

from __future__ import annotations

import base64
import itertools
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from litestar import Litestar, Request, Response, get, post, put

from tests.fakes.server import Daily, Faults, Window

API_USER_ID = 360001  # the agent the API token acts as: the requester when none is given
CALL_ID = re.compile(r"Wildix call (\S+)")
VOICE_REQUIRED = ("from", "to", "started_at", "call_duration")
TAG = re.compile(r"^[^\s,]+$")
AGENTS = ("agent", "admin")


def _error(status: int, error: str, description: str, **extra: Any) -> Response[Any]:
    return Response({"error": error, "description": description, **extra}, status_code=status)


def _invalid(field_name: str, description: str) -> Response[Any]:
    details = {field_name: [{"description": description, "error": "InvalidValue"}]}
    return _error(422, "RecordInvalid", "Record validation errors", details=details)


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


@dataclass
class FakeZendesk:
    email: str = "api@example.org"
    api_token: str = "6wiIBWbGkBMo1mRDMuVwkw1EPsNkeUj95PIz2akv"
    bearer: str | None = None
    limit: int = 200  # Team plan: requests per minute for the account
    interval: float = 60.0
    search_limit: int = 2500  # the Search API's own window (per minute, every plan)
    update_limit: int = 100  # Update Ticket's own account-wide window (per minute)
    list_limit: int = 100  # List Tickets' own window (per minute)
    users: dict[int, dict[str, Any]] = field(default_factory=dict)
    groups: dict[int, dict[str, Any]] = field(default_factory=dict)
    tickets: dict[int, dict[str, Any]] = field(default_factory=dict)
    log: list[tuple[str, str, int]] = field(default_factory=list)
    bodies: list[tuple[str, str, Any]] = field(default_factory=list)  # writes, as received

    def __post_init__(self) -> None:
        self.burst = Window(self.limit, self.interval)
        self.search = Window(self.search_limit, self.interval)
        self.update = Window(self.update_limit, self.interval)
        self.listing = Window(self.list_limit, self.interval)
        self.daily = Daily(None)  # Zendesk has no daily quota; kept so every fake reads alike
        self.faults = Faults()
        self._ids = itertools.count(API_USER_ID + 1)
        self._ticket_ids = itertools.count(1001)
        self.users[API_USER_ID] = {
            "id": API_USER_ID,
            "name": "API User",
            "email": self.email,
            "role": "admin",
            "phone": None,
        }
        self.app = self._app()

    # -- seeding and reading, for tests ----------------------------------------------------------

    def add_contact(self, phone: str, first: str, last: str) -> str:
        """An end user (what a call is linked to), phone typed as given."""
        uid = next(self._ids)
        self.users[uid] = {
            "id": uid,
            "name": f"{first} {last}",
            "email": None,
            "role": "end-user",
            "phone": phone,
        }
        return str(uid)

    def add_agent(self, email: str, name: str) -> str:
        uid = next(self._ids)
        self.users[uid] = {"id": uid, "name": name, "email": email, "role": "agent", "phone": None}
        return str(uid)

    def add_group(self, name: str, *agents: str) -> int:
        """A group and the agents (ids) who are its members."""
        gid = 9000 + len(self.groups)
        self.groups[gid] = {"id": gid, "name": name, "agents": {int(a) for a in agents}}
        return gid

    @property
    def contacts(self) -> dict[int, dict[str, Any]]:
        return {uid: u for uid, u in self.users.items() if u["role"] == "end-user"}

    def tickets_for(self, wildix_call_id: str) -> list[dict[str, Any]]:
        return [
            t
            for t in self.tickets.values()
            if any(wildix_call_id in CALL_ID.findall(c["body"]) for c in t["comments"])
        ]

    @property
    def rejected_for_rate(self) -> int:
        windows = (self.burst, self.search, self.update, self.listing)
        return sum(w.rejected for w in windows)

    # -- machinery -------------------------------------------------------------------------------

    def _authorized(self, request: Request[Any, Any, Any]) -> bool:
        header = request.headers.get("authorization", "")
        if self.bearer and header == f"Bearer {self.bearer}":
            return True
        pair = f"{self.email}/token:{self.api_token}".encode()
        return header == f"Basic {base64.b64encode(pair).decode()}"

    def _headers(self, window: Window, name: str = "") -> dict[str, str]:
        reset = str(max(1, round(window.reset_in())))
        if name:  # an endpoint's own limit
            value = f"total={window.limit}; remaining={window.remaining}; resets={reset}"
            return {f"zendesk-ratelimit-{name}": value}
        return {
            "x-rate-limit": str(window.limit),
            "x-rate-limit-remaining": str(window.remaining),
            "ratelimit-limit": str(window.limit),
            "ratelimit-remaining": str(window.remaining),
            "ratelimit-reset": reset,
        }

    def _guard(
        self, request: Request[Any, Any, Any], *windows: tuple[str, Window]
    ) -> Response[Any] | None:
        """Auth, then each window in turn: ("", the account's) or (an endpoint's name, its own)."""
        if not self._authorized(request):
            return _error(401, "Couldn't authenticate you", "Couldn't authenticate you")
        for name, window in windows:
            if not window.allow():
                resp = _error(
                    429,
                    "APIRateLimitExceeded",
                    "Number of allowed API requests per minute exceeded",
                )
                resp.headers.update(self._headers(window, name))
                resp.headers["retry-after"] = str(max(1, round(window.reset_in() + 0.5)))
                return resp
        return None

    def _ok(self, body: Any, *windows: tuple[str, Window], status: int = 200) -> Response[Any]:
        headers = {k: v for name, w in windows for k, v in self._headers(w, name).items()}
        return Response(body, status_code=status, headers=headers)

    def _finish(self, request: Request[Any, Any, Any], resp: Response[Any]) -> Response[Any]:
        self.log.append((request.method, request.url.path, resp.status_code))
        return resp

    async def _body(self, request: Request[Any, Any, Any], key: str) -> dict[str, Any] | None:
        try:
            data = json.loads(await request.body())
        except ValueError:
            return None
        inner = data.get(key) if isinstance(data, dict) else None
        if isinstance(inner, dict):
            self.bodies.append((request.method, request.url.path, data))
            return inner
        return None

    def _invalid_ticket(self, t: dict[str, Any], creating: bool) -> Response[Any] | None:
        if creating and not t.get("comment"):  # "The only required property is comment"
            return _invalid("description", "Description: cannot be blank")
        comment = t.get("comment")
        if comment is not None and not (isinstance(comment, dict) and comment.get("body")):
            return _invalid("comment", "Comment: body cannot be blank")
        if comment is not None and not isinstance(comment.get("public", True), bool):
            return _invalid("comment", "Comment: public must be true or false")
        if (voice := t.get("voice_comment")) is not None:
            missing = [k for k in VOICE_REQUIRED if voice.get(k) in (None, "")]
            if missing:
                return _invalid("voice_comment", f"Voice comment: {', '.join(missing)} missing")
            if not isinstance(voice["call_duration"], int):
                return _invalid("voice_comment", "Voice comment: call_duration is not an integer")
            try:
                datetime.fromisoformat(str(voice["started_at"]).replace("Z", "+00:00"))
            except ValueError:
                return _invalid("voice_comment", "Voice comment: started_at is not ISO 8601")
            agent = voice.get("answered_by_id")
            if agent is not None and self.users.get(agent, {}).get("role") not in AGENTS:
                return _invalid("voice_comment", "Voice comment: answered_by_id is not an agent")
        if "requester_id" in t and t["requester_id"] not in self.users:
            return _invalid("requester", "Requester: is invalid")
        assignee = t.get("assignee_id")
        if assignee is not None and self.users.get(assignee, {}).get("role") not in AGENTS:
            return _invalid("assignee", "Assignee: is not an agent")
        group = t.get("group_id")
        if group is not None and group not in self.groups:
            return _invalid("group", "Group: is invalid")
        if (
            group is not None
            and assignee is not None
            and assignee not in self.groups[group]["agents"]
        ):
            return _invalid("assignee", "Assignee: is not a member of the group")
        for key in ("tags", "additional_tags", "remove_tags"):
            tags = t.get(key, [])
            if not isinstance(tags, list) or not all(
                isinstance(x, str) and TAG.match(x) for x in tags
            ):
                return _invalid(key, f"{key}: a list of words without spaces")
        if t.get("external_id") is not None and not isinstance(t["external_id"], str):
            return _invalid("external_id", "External id: is not a string")
        return None

    def _comments(self, t: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        if comment := t.get("comment"):
            out.append(
                {"type": "Comment", "body": comment["body"], "public": comment.get("public", True)}
            )
        if voice := t.get("voice_comment"):
            out.append({"type": "VoiceComment", "body": "", "public": False, "data": dict(voice)})
        return out

    # -- the API ---------------------------------------------------------------------------------

    def _app(self) -> Litestar:
        fake = self
        account = (("", fake.burst),)
        updating = (*account, ("tickets-update", fake.update))
        listing = (*account, ("tickets-index", fake.listing))
        searching = (("search-index", fake.search),)  # not counted in the account's window

        @post("/api/v2/tickets", status_code=201)
        async def create_ticket(request: Request[Any, Any, Any]) -> Response[Any]:
            if (denied := fake._guard(request, *account)) is not None:
                return fake._finish(request, denied)
            t = await fake._body(request, "ticket")
            if t is None:
                return fake._finish(request, _error(400, "InvalidEndpoint", "ticket missing"))
            if (invalid := fake._invalid_ticket(t, creating=True)) is not None:
                return fake._finish(request, invalid)
            tid = next(fake._ticket_ids)
            ticket = {
                "id": tid,
                "subject": t.get("subject"),
                "status": "new",
                "requester_id": t.get("requester_id", API_USER_ID),
                "assignee_id": t.get("assignee_id"),
                "group_id": t.get("group_id"),
                "external_id": t.get("external_id"),
                "tags": list(dict.fromkeys(t.get("tags", []))),
                "comments": fake._comments(t),
                "updates": 0,
            }
            fake.tickets[tid] = ticket
            if await fake.faults.after_persist():
                return fake._finish(request, _error(500, "InternalError", "Internal error"))
            shown = {k: v for k, v in ticket.items() if k not in ("comments", "updates")}
            return fake._finish(request, fake._ok({"ticket": shown}, *account, status=201))

        @put("/api/v2/tickets/{ticket_id:int}")
        async def update_ticket(request: Request[Any, Any, Any]) -> Response[Any]:
            ticket_id = request.path_params["ticket_id"]
            if (denied := fake._guard(request, *updating)) is not None:
                return fake._finish(request, denied)
            ticket = fake.tickets.get(ticket_id)
            if ticket is None:
                return fake._finish(request, _error(404, "RecordNotFound", "Not found"))
            t = await fake._body(request, "ticket")
            if t is None:
                return fake._finish(request, _error(400, "InvalidEndpoint", "ticket missing"))
            if (invalid := fake._invalid_ticket(t, creating=False)) is not None:
                return fake._finish(request, invalid)
            for key in ("subject", "requester_id", "assignee_id", "group_id", "external_id"):
                if key in t:
                    ticket[key] = t[key]
            tags = t.get("tags", ticket["tags"])
            tags = [x for x in tags if x not in t.get("remove_tags", [])]
            ticket["tags"] = list(dict.fromkeys([*tags, *t.get("additional_tags", [])]))
            ticket["comments"] += fake._comments(t)
            ticket["updates"] += 1
            shown = {k: v for k, v in ticket.items() if k not in ("comments", "updates")}
            return fake._finish(request, fake._ok({"ticket": shown}, *updating))

        @get("/api/v2/tickets")
        async def list_tickets(request: Request[Any, Any, Any]) -> Response[Any]:
            if (denied := fake._guard(request, *listing)) is not None:
                return fake._finish(request, denied)
            wanted = request.query_params.get("external_id")
            found = [
                {k: v for k, v in t.items() if k not in ("comments", "updates")}
                for t in fake.tickets.values()
                if wanted is None or t["external_id"] == wanted
            ]
            body = {"tickets": found, "next_page": None, "previous_page": None, "count": len(found)}
            return fake._finish(request, fake._ok(body, *listing))

        @get("/api/v2/search")
        async def search(request: Request[Any, Any, Any]) -> Response[Any]:
            if (denied := fake._guard(request, *searching)) is not None:
                return fake._finish(request, denied)
            terms = dict(
                part.split(":", 1)
                for part in request.query_params.get("query", "").split()
                if ":" in part
            )
            phone = terms.get("phone", "")
            if not phone:
                return fake._finish(request, _error(400, "InvalidQuery", "query is not supported"))
            suffix, wanted = phone.startswith("*"), phone.lstrip("*")
            results = []
            for user in fake.users.values():
                if terms.get("role", user["role"]) != user["role"] or not user["phone"]:
                    continue
                digits = _digits(user["phone"])
                # the index holds digits only: a "+" in the query never matches
                if (digits.endswith(wanted) if suffix else digits == wanted) and wanted.isdigit():
                    results.append({**user, "result_type": "user"})
            body = {
                "results": results,
                "facets": None,
                "next_page": None,
                "previous_page": None,
                "count": len(results),
            }
            return fake._finish(request, fake._ok(body, *searching))

        @post("/api/v2/users", status_code=201)
        async def create_user(request: Request[Any, Any, Any]) -> Response[Any]:
            if (denied := fake._guard(request, *account)) is not None:
                return fake._finish(request, denied)
            u = await fake._body(request, "user")
            if u is None or not u.get("name"):
                return fake._finish(request, _invalid("name", "Name: is too short"))
            if u.get("role", "end-user") != "end-user":
                return fake._finish(request, _invalid("role", "Role: only end users here"))
            first, _, last = u["name"].rpartition(" ")
            uid = int(fake.add_contact(u.get("phone") or "", first, last))
            fake.users[uid]["name"] = u["name"]
            return fake._finish(request, fake._ok({"user": fake.users[uid]}, *account, status=201))

        @get("/api/v2/users/search")
        async def search_users(request: Request[Any, Any, Any]) -> Response[Any]:
            if (denied := fake._guard(request, *account)) is not None:
                return fake._finish(request, denied)
            query = request.query_params.get("query", "").lower()
            found = [u for u in fake.users.values() if query and query == (u["email"] or "")]
            body = {"users": found, "next_page": None, "previous_page": None, "count": len(found)}
            return fake._finish(request, fake._ok(body, *account))

        @get("/api/v2/users/me")
        async def me(request: Request[Any, Any, Any]) -> Response[Any]:
            if (denied := fake._guard(request, *account)) is not None:
                return fake._finish(request, denied)
            return fake._finish(request, fake._ok({"user": fake.users[API_USER_ID]}, *account))

        return Litestar(
            [create_ticket, update_ticket, list_tickets, search, create_user, search_users, me],
            debug=False,
        )
