"""The ``zendesk`` connector: each external Wildix call as one Zendesk Support ticket.

The ticket is opened when the call has ended, so that ``tickets_for`` can tell a missed inbound
call (its own group, ``missed_call_group_id``) from an answered one: a private note with the call's
notes and a voice comment (from, to, duration, recording, the agent who answered). The final
record, when it comes, adds one private note and moves the outcome tag (``PUT``; comments cannot be
edited). The caller is an end user found through the Search API; agents by email. API token
(``{email}/token:{api_token}``, basic auth) or an OAuth access token. Crash recovery: the marker is
the ticket's ``external_id``, listed by ``GET /api/v2/tickets?external_id=`` (no search index).
"""

from __future__ import annotations

import base64
import re
from typing import Any, ClassVar, Literal

import httpx
import msgspec

from relay import (
    ConnectorContext,
    DeliveryContext,
    PermanentError,
    crm,
    hookimpl,
    parse_retry_after,
)

TicketKind = Literal["inbound_answered", "inbound_missed", "outbound", "internal"]
KINDS: tuple[TicketKind, ...] = ("inbound_answered", "inbound_missed", "outbound", "internal")
OUTCOME_TAGS = {
    "completed": "call_answered",
    "missed": "call_missed",
    "busy": "call_busy",
    "failed": "call_failed",
}  # created once the call has ended: never in progress
SUBDOMAIN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
TAG = re.compile(r"^[^\s,]{1,80}$")


class ZendeskConfig(crm.CrmConfig, kw_only=True):
    earliest_create_at: ClassVar[crm.CreateAt] = "end"  # the outcome decides on a ticket
    subdomain: str | None = None  # acme → https://acme.zendesk.com
    base_url: str | None = None  # default: the subdomain's URL
    email: str | None = None  # the agent the API token acts as
    api_token: str | None = None  # Admin Center → Apps and integrations → Zendesk API
    access_token: str | None = None  # an OAuth bearer token, instead of email + api_token
    tickets_for: list[TicketKind] = msgspec.field(default_factory=lambda: list(KINDS))
    missed_call_group_id: int | None = None  # the group missed inbound calls go to
    group_id: int | None = None  # the group of every other call's ticket
    # added to every ticket, besides the outcome and direction tags
    tags: list[str] = msgspec.field(default_factory=lambda: ["wildix"])
    voice_comment: bool = True  # a voice comment besides the private note
    # Support/Suite Team plan: 200 requests a minute. The Search API has its own limit (2,500 a
    # minute); whether searches also count against the account's is not documented: together
    # these stay within Team's 200.
    rate_limit: crm.RateLimit = crm.RateLimit(requests=150, per=60)
    search_rate_limit: crm.RateLimit = crm.RateLimit(requests=50, per=60)
    index_lag: crm.Duration = crm.Duration(180)  # search "can lag by a few minutes"

    def __post_init__(self) -> None:
        if self.base_url is None:
            sub = (self.subdomain or "").strip().lower()
            if not SUBDOMAIN.match(sub):
                raise ValueError(
                    "set `subdomain` (acme for https://acme.zendesk.com) or `base_url`"
                )
            self.base_url = f"https://{sub}.zendesk.com"
        super().__post_init__()
        if bool(self.api_token) == bool(self.access_token):
            raise ValueError("set exactly one of `api_token` (with `email`) and `access_token`")
        if self.api_token and not (self.email and "@" in self.email):
            raise ValueError("`api_token` needs `email`: the Zendesk agent the token acts as")
        if not self.tickets_for:
            raise ValueError("`tickets_for` is empty: no call would open a ticket")
        if bad := [t for t in self.tags if not TAG.match(t)]:
            raise ValueError(f"`tags`: Zendesk tags are single words, got {bad[:3]!r}")
        for key, value in [*self.owners.items(), ("default_owner", self.default_owner)]:
            if value is not None and not str(value).isdigit():
                raise ValueError(f"owner {key!r}: Zendesk user ids are numbers, got {value!r}")


def kind(facts: crm.Facts) -> TicketKind:
    """Which ``tickets_for`` entry a call falls under: busy and failed inbound calls were missed."""
    if facts.direction == "inbound":
        return "inbound_answered" if facts.status == "completed" else "inbound_missed"
    return "outbound" if facts.direction == "outbound" else "internal"


def _iso(activity: crm.Activity) -> str:
    """The voice comment's ``started_at``: ISO 8601, as the docs ask."""
    when = activity.started_at or activity.ended_at
    assert when is not None  # created at the end: an event time is always known
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


class ZendeskConnector(crm.CrmConnector):
    type = "zendesk"
    vendor = "Zendesk"
    Config = ZendeskConfig
    config: ZendeskConfig

    # -- HTTP specifics --------------------------------------------------------------------------

    async def auth_headers(self, ctx: ConnectorContext) -> dict[str, str]:
        if self.config.api_token:
            pair = f"{self.config.email}/token:{self.config.api_token}".encode()
            return {"authorization": f"Basic {base64.b64encode(pair).decode()}"}
        return {"authorization": f"Bearer {self.config.access_token}"}

    def auth_failure(self, response: httpx.Response) -> str:
        error = crm.json_object(response).get("error") or "Couldn't authenticate you"
        if self.config.api_token:
            hint = (
                "check `email` (an agent or admin) and `api_token` (Admin Center → Apps and"
                " integrations → Zendesk API; a deleted token stops working at once)"
            )
        else:
            hint = "the OAuth access token was revoked or expired: put a valid one"
        return (
            f"credentials of connector {self.name!r} rejected (HTTP 401 {error}); {hint} in"
            " config.yaml and run `relay reload`: its deliveries wait and resume on their own"
            f" once the credentials work (`relay circuit close {self.name}` sends them at once)"
        )

    def rate_limited(self, response: httpx.Response) -> crm.Limited | None:
        if response.status_code != 429:
            return None
        body = crm.json_object(response)
        reason = str(body.get("description") or body.get("error") or "rate limit reached")
        wait = parse_retry_after(response.headers.get("retry-after"))
        if wait is None:
            wait = parse_retry_after(response.headers.get("ratelimit-reset")) or 60.0
        return crm.Limited(False, wait, reason)

    def raise_for(self, response: httpx.Response, what: str) -> None:
        """Zendesk's 422 names the field at fault in ``details``: say which, then fail."""
        body = crm.json_object(response)
        if response.status_code == 422 and isinstance(body.get("details"), dict):
            fields = ", ".join(
                f"{name}: {'; '.join(str(d.get('description', d)) for d in problems)}"
                for name, problems in body["details"].items()
                if isinstance(problems, list)
            )
            raise PermanentError(
                f"{self.vendor} {what}: HTTP 422 {body.get('error', 'RecordInvalid')} "
                f"({fields[:300]})",
                status_code=422,
            )
        super().raise_for(response, what)

    async def check(self, ctx: ConnectorContext) -> None:
        """The API user must be an agent or admin: end users cannot write tickets for others."""
        response = await self.call_api(ctx, "GET", "/api/v2/users/me", what="check")
        user = crm.json_object(response).get("user") or {}
        if user.get("role") not in ("agent", "admin"):
            raise PermanentError(
                f"{self.vendor} check: the API user of connector {self.name!r} is "
                f"{user.get('role') or 'anonymous'}, not an agent or admin"
            )

    # -- the CRM adapter -------------------------------------------------------------------------

    async def search_people(self, number: str, ctx: ConnectorContext) -> list[crm.Person]:
        """Digits only, no ``+``; a leading ``*`` matches whatever way the number was typed."""
        query = f"type:user role:end-user phone:*{crm.national_digits(number)}"
        response = await self.call_api(
            ctx,
            "GET",
            "/api/v2/search",
            what="end user search",
            bucket="search",
            params={"query": query, "per_page": 20},
        )
        return [
            crm.Person(id=str(user["id"]), name=user.get("name"), phones=[user["phone"]])
            for user in crm.json_object(response).get("results") or []
            if user.get("result_type", "user") == "user" and user.get("phone")
        ]

    async def create_person(
        self, number: str, facts: crm.Facts, ctx: ConnectorContext
    ) -> crm.Person:
        name = facts.remote_name or number
        body = {"user": {"name": name, "phone": number, "role": "end-user"}}
        response = await self.call_api(ctx, "POST", "/api/v2/users", what="create user", json=body)
        user = crm.json_object(response)["user"]
        return crm.Person(id=str(user["id"]), name=name, phones=[number])

    async def find_user(self, email: str, ctx: ConnectorContext) -> str | None:
        response = await self.call_api(
            ctx, "GET", "/api/v2/users/search", what="agent lookup", params={"query": email}
        )
        for user in crm.json_object(response).get("users") or []:
            if user.get("role") in ("agent", "admin") and str(user.get("email")).lower() == email:
                return str(user["id"])
        return None

    def skip_reason(self, facts: crm.Facts) -> str | None:
        which = kind(facts)
        return None if which in self.config.tickets_for else f"{which} calls open no ticket"

    def voice(self, activity: crm.Activity) -> dict[str, Any]:
        """Zendesk's voice comment: what an agent sees of the call, with the recording player."""
        comment: dict[str, Any] = {
            "from": activity.from_number or "unknown",
            "to": activity.to_number or "unknown",
            "started_at": _iso(activity),
            "call_duration": round(activity.seconds or 0),
        }
        if activity.recording_urls:
            comment["recording_url"] = activity.recording_urls[0]
        if activity.owner is not None and activity.facts.answered:
            comment["answered_by_id"] = int(activity.owner)
        return comment

    def _tags(self, activity: crm.Activity) -> list[str]:
        return [OUTCOME_TAGS[activity.status], f"call_{activity.direction}"]

    async def create_activity(self, activity: crm.Activity, ctx: DeliveryContext) -> str:
        missed = kind(activity.facts) == "inbound_missed"
        group = self.config.missed_call_group_id if missed else self.config.group_id
        ticket: dict[str, Any] = {
            "subject": activity.title,
            "comment": {"body": activity.notes, "public": False},
            "external_id": activity.marker,
            "tags": [*self.config.tags, *self._tags(activity)],
        }
        if self.config.voice_comment:
            ticket["voice_comment"] = self.voice(activity)
        if activity.person is not None:
            ticket["requester_id"] = int(activity.person.id)
        if group is not None:
            ticket["group_id"] = group
        # a missed call sent to its group waits there for whoever calls back
        if activity.owner is not None and not (missed and group is not None):
            ticket["assignee_id"] = int(activity.owner)
        response = await self.call_api(
            ctx, "POST", "/api/v2/tickets", what="create ticket", json={"ticket": ticket}
        )
        ticket_id = str(crm.json_object(response)["ticket"]["id"])
        ctx.log.info(
            "created Zendesk ticket %s for Wildix call %s", ticket_id, activity.facts.call_id
        )
        return ticket_id

    async def update_activity(
        self, record_id: str, activity: crm.Activity, ctx: DeliveryContext
    ) -> None:
        """Comments cannot change: the better data is one more private note, and the outcome
        tag moves (``additional_tags``/``remove_tags`` keep the tags agents added)."""
        current = self._tags(activity)
        ticket = {
            "subject": activity.title,
            "comment": {"body": activity.notes, "public": False},
            "additional_tags": current,
            "remove_tags": [t for t in OUTCOME_TAGS.values() if t not in current],
        }
        await self.call_api(
            ctx,
            "PUT",
            f"/api/v2/tickets/{record_id}",
            what="update ticket",
            json={"ticket": ticket},
        )

    async def find_activity(self, activity: crm.Activity, ctx: DeliveryContext) -> str | None:
        response = await self.call_api(
            ctx,
            "GET",
            "/api/v2/tickets",
            what="ticket lookup",
            params={"external_id": activity.marker},
        )
        for ticket in crm.json_object(response).get("tickets") or []:
            if ticket.get("external_id") == activity.marker:
                return str(ticket["id"])
        return None


@hookimpl
def register_connectors(register: Any) -> None:
    register(ZendeskConnector)
