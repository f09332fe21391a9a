"""The ``freshdesk`` connector: each external Wildix call (or only the missed ones) as one
Freshdesk ticket raised by the caller, with the call's facts in a private note.

A ticket is created when the call has ended (``tickets: missed`` needs the outcome) and updated
when the final record brings more (duration, recording). The API key is the basic-auth user.
Contacts are found with the filter (search) API by every way the number is commonly written,
since Freshdesk compares phone fields as typed. Crash recovery: the ticket carries its marker
as a tag and is found again among the requester's recent tickets (the list API, not the search
index, so a ticket created a second ago is found). Reference: Freshdesk API v2 (tickets, notes,
conversations, contacts, search, agents).
"""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import timedelta
from typing import Any, ClassVar, Literal

import httpx
import phonenumbers

from relay import (
    AuthError,
    ConnectorContext,
    DeliveryContext,
    DeliveryError,
    PermanentError,
    RetryableError,
    crm,
    hookimpl,
    parse_retry_after,
)

SOURCE_PHONE = 3
QUERY_MAX = 512  # Freshdesk's limit on a search query, quotes excluded
PAGE = 100
FORMATS = (
    phonenumbers.PhoneNumberFormat.E164,
    phonenumbers.PhoneNumberFormat.INTERNATIONAL,
    phonenumbers.PhoneNumberFormat.NATIONAL,
)


class FreshdeskConfig(crm.CrmConfig, kw_only=True):
    earliest_create_at: ClassVar[crm.CreateAt] = "end"  # tickets: missed needs the outcome
    api_key: str  # Profile settings → Your API Key
    domain: str | None = None  # acme → https://acme.freshdesk.com
    tickets: Literal["all", "missed"] = "all"  # missed: unanswered inbound calls only
    unlinked_requester: str | None = None  # email raising the tickets of unknown callers
    group_id: int | None = None
    priority: int = 1  # 1 low, 2 medium, 3 high, 4 urgent
    missed_status: int = 2  # Open
    answered_status: int = 4  # Resolved
    tags: list[str] = []
    marker_scan_pages: int = 2  # crash recovery: pages of 100 recent tickets of the requester
    # Growth: 200 requests a minute per account and 20 to the contacts endpoints (Pro 100), each
    # less room for network jitter (a request sent on its slot may arrive next to the next one)
    rate_limit: crm.RateLimit = crm.RateLimit(requests=190, per=60)
    search_rate_limit: crm.RateLimit = crm.RateLimit(requests=18, per=60)
    index_lag: crm.Duration = crm.Duration(180)  # new contacts take minutes to be searchable

    def __post_init__(self) -> None:
        if self.base_url is None:
            domain = (self.domain or "").strip().removesuffix(".freshdesk.com")
            if not domain:
                raise ValueError("set `domain` (acme for https://acme.freshdesk.com)")
            self.base_url = f"https://{domain}.freshdesk.com"
        super().__post_init__()
        if not self.api_key.strip():
            raise ValueError("`api_key` is empty: copy it from Profile settings in Freshdesk")
        unlinked = self.on_no_match != "skip" or self.log_internal
        if unlinked and not self.unlinked_requester:
            raise ValueError(
                "a Freshdesk ticket needs a requester: set `unlinked_requester` (an email) for "
                "calls whose number matches no contact, or `on_no_match: skip`"
            )
        if self.unlinked_requester is not None and "@" not in self.unlinked_requester:
            raise ValueError("`unlinked_requester` must be an email address")
        if not 1 <= self.priority <= 4:
            raise ValueError("`priority` is 1 (low) to 4 (urgent)")
        for key in ("missed_status", "answered_status"):
            if getattr(self, key) < 2:
                raise ValueError(f"`{key}`: Freshdesk statuses are 2 (open) and up")
        if self.marker_scan_pages < 1:
            raise ValueError("`marker_scan_pages` must be at least 1")
        for key, value in [*self.owners.items(), ("default_owner", self.default_owner)]:
            if value is not None and not str(value).isdigit():
                raise ValueError(f"owner {key!r}: Freshdesk agent ids are numbers, got {value!r}")


def json_list(response: httpx.Response) -> list[dict[str, Any]]:
    """A list endpoint's body (agents, tickets, conversations), or [] when it is not one."""
    try:
        data = response.json()
    except ValueError:
        return []
    return [x for x in data if isinstance(x, dict)] if isinstance(data, list) else []


def digest(body: dict[str, Any]) -> str:
    """What was last written, to write only what changed."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:24]


def spellings(number: str) -> list[str]:
    """The ways people type an E.164 number into a phone field, for an exact-match search."""
    parsed = phonenumbers.parse(number, None)
    forms = [phonenumbers.format_number(parsed, f) for f in FORMATS]
    national = "".join(c for c in forms[2] if c.isdigit())
    forms += [national, number.lstrip("+"), crm.national_digits(number)]
    return list(dict.fromkeys(forms))


def search_query(number: str) -> str:
    """``"phone:'…' OR mobile:'…' OR …"``, as many spellings as fit Freshdesk's query limit."""
    clauses: list[str] = []
    for form in spellings(number):
        more = [f"phone:'{form}'", f"mobile:'{form}'"]
        if len(" OR ".join(clauses + more)) > QUERY_MAX:
            break
        clauses += more
    return '"' + " OR ".join(clauses) + '"'


class FreshdeskConnector(crm.CrmConnector):
    type = "freshdesk"
    vendor = "Freshdesk"
    Config = FreshdeskConfig
    config: FreshdeskConfig

    # -- HTTP specifics --------------------------------------------------------------------------

    async def auth_headers(self, ctx: ConnectorContext) -> dict[str, str]:
        pair = base64.b64encode(f"{self.config.api_key}:X".encode()).decode()
        return {"authorization": f"Basic {pair}"}

    def auth_failure(self, response: httpx.Response) -> str:
        body = crm.json_object(response)
        code = body.get("code") or "invalid_credentials"
        return (
            f"the API key of connector {self.name!r} was rejected (HTTP 401 {code}): the agent"
            " was deactivated or reset the key (Profile settings → Your API Key). Put the"
            " current key in config.yaml and run `relay reload`: its deliveries wait and resume"
            f" on their own once the key works (`relay circuit close {self.name}` sends them at"
            " once)"
        )

    def rate_limited(self, response: httpx.Response) -> crm.Limited | None:
        if response.status_code != 429:
            return None
        wait = parse_retry_after(response.headers.get("retry-after"))
        total = response.headers.get("x-ratelimit-total")
        reason = f"rate limit reached (X-RateLimit-Total {total})" if total else "rate limited"
        return crm.Limited(False, 60.0 if wait is None else wait, reason)

    async def check(self, ctx: ConnectorContext) -> None:
        """The key's own agent: proves the key and the domain."""
        await self.call_api(ctx, "GET", "/api/v2/agents/me", what="check")

    # -- the CRM adapter -------------------------------------------------------------------------

    def skip_reason(self, facts: crm.Facts) -> str | None:
        if self.config.tickets == "missed" and not (
            facts.direction == "inbound" and facts.status != "completed"
        ):
            return "tickets: missed, and this call was not a missed inbound call"
        return None

    async def search_people(self, number: str, ctx: ConnectorContext) -> list[crm.Person]:
        response = await self.call_api(
            ctx,
            "GET",
            "/api/v2/search/contacts",
            what="contact search",
            bucket="search",
            also=("api",),  # a search counts against the account's limit too
            params={"query": search_query(number)},
        )
        return [
            crm.Person(
                id=str(hit["id"]),
                name=hit.get("name"),
                phones=[p for p in (hit.get("phone"), hit.get("mobile")) if p],
            )
            for hit in crm.json_object(response).get("results") or []
        ]

    async def create_person(
        self, number: str, facts: crm.Facts, ctx: ConnectorContext
    ) -> crm.Person:
        name = facts.remote_name or number
        response = await self.call_api(
            ctx,
            "POST",
            "/api/v2/contacts",
            what="create contact",
            json={"name": name, "phone": number},
        )
        return crm.Person(id=str(crm.json_object(response)["id"]), name=name, phones=[number])

    async def find_user(self, email: str, ctx: ConnectorContext) -> str | None:
        response = await self.call_api(
            ctx, "GET", "/api/v2/agents", what="agent lookup", params={"email": email}
        )
        for agent in json_list(response):
            if str((agent.get("contact") or {}).get("email", "")).lower() == email:
                return str(agent["id"])
        return None

    def requester(self, activity: crm.Activity) -> dict[str, Any]:
        if activity.person is not None:
            return {"requester_id": int(activity.person.id)}
        if self.config.unlinked_requester:
            return {"email": self.config.unlinked_requester}
        raise PermanentError(
            f"Freshdesk: call {activity.facts.call_id} has no contact to raise its ticket: set"
            " `unlinked_requester` in config.yaml, then retry the dead deliveries"
        )

    def fields(self, activity: crm.Activity) -> dict[str, Any]:
        """What a ticket shows and an update may change. The description is what the requester
        may see in the support portal: the title and time only; the facts go to a private note."""
        cfg = self.config
        started = activity.started_at
        when = f"\n{started:%Y-%m-%d %H:%M:%S} UTC" if started else ""
        body: dict[str, Any] = {
            "subject": activity.title,
            "description": crm.text_to_html(activity.title + when),
            "status": cfg.answered_status if activity.status == "completed" else cfg.missed_status,
        }
        if activity.owner is not None:
            body["responder_id"] = int(activity.owner)
        return body

    def note(self, activity: crm.Activity) -> dict[str, Any]:
        return {"body": crm.text_to_html(activity.notes), "private": True}

    async def create_activity(self, activity: crm.Activity, ctx: DeliveryContext) -> str:
        cfg = self.config
        body = {
            **self.fields(activity),
            **self.requester(activity),
            "priority": cfg.priority,
            "source": SOURCE_PHONE,
            "tags": list(dict.fromkeys([*cfg.tags, activity.marker])),
        }
        if cfg.group_id is not None:
            body["group_id"] = cfg.group_id
        response = await self.call_api(
            ctx, "POST", "/api/v2/tickets", what="create ticket", json=body
        )
        ticket = str(crm.json_object(response)["id"])
        ctx.log.info(
            "created Freshdesk ticket %s for Wildix call %s", ticket, activity.facts.call_id
        )
        written = {"fields": digest(self.fields(activity))}
        await ctx.links.set(f"ticket:{ticket}", written)
        try:
            await self._write_note(ticket, activity, ctx, written, fresh=True)
        except DeliveryError as exc:
            # the ticket exists: keep the create's intent so that the next attempt finds the
            # ticket by its tag and adds the note, rather than raising a second ticket
            message = f"Freshdesk ticket {ticket} created, its note not yet: {exc}"
            if isinstance(exc, AuthError):  # the key was rejected: the circuit's business
                raise AuthError(message, exc.retry_after, status_code=exc.status_code) from exc
            if isinstance(exc, RetryableError):
                raise RetryableError(message, exc.retry_after) from exc
            raise PermanentError(message) from exc
        return ticket

    async def update_activity(
        self, record_id: str, activity: crm.Activity, ctx: DeliveryContext
    ) -> None:
        """Only what changed, and each write recorded at once: under 429s every attempt makes
        progress instead of repeating the ticket update before the note's."""
        key = f"ticket:{record_id}"
        written: dict[str, Any] = dict(await ctx.links.get(key) or {})
        fields = self.fields(activity)
        if written.get("fields") != digest(fields):
            path = f"/api/v2/tickets/{record_id}"
            await self.call_api(ctx, "PUT", path, what="update ticket", json=fields)
            written["fields"] = digest(fields)
            await ctx.links.set(key, written)
        await self._write_note(record_id, activity, ctx, written)

    async def _write_note(
        self,
        ticket: str,
        activity: crm.Activity,
        ctx: DeliveryContext,
        written: dict[str, Any],
        *,
        fresh: bool = False,
    ) -> None:
        """Add the private note, or update it (found by the marker if its id was not kept).
        A ``fresh`` ticket, created by this very attempt, has no note to look for."""
        note = self.note(activity)
        if written.get("body") == digest(note):
            return
        note_id = written.get("note")
        if note_id is None and not fresh:
            note_id = await self._find_note(ticket, activity, ctx)
        if note_id is None:
            path = f"/api/v2/tickets/{ticket}/notes"
            response = await self.call_api(ctx, "POST", path, what="add note", json=note)
            note_id = crm.json_object(response)["id"]
        else:
            path = f"/api/v2/conversations/{note_id}"
            body = {"body": note["body"]}  # a note's privacy cannot be changed
            await self.call_api(ctx, "PUT", path, what="update note", json=body)
        written.update(note=note_id, body=digest(note))
        await ctx.links.set(f"ticket:{ticket}", written)

    async def _find_note(
        self, ticket: str, activity: crm.Activity, ctx: DeliveryContext
    ) -> int | None:
        response = await self.call_api(
            ctx,
            "GET",
            f"/api/v2/tickets/{ticket}/conversations",
            what="list conversations",
            params={"per_page": PAGE},
        )
        for item in json_list(response):
            if item.get("private") and activity.marker in str(item.get("body") or ""):
                return int(item["id"])
        return None

    async def find_activity(self, activity: crm.Activity, ctx: DeliveryContext) -> str | None:
        """The requester's tickets changed since the call began, newest first, by tag."""
        start = activity.started_at or activity.ended_at
        params: dict[str, Any] = {
            **self.requester(activity),
            "order_by": "created_at",
            "order_type": "desc",
            "per_page": PAGE,
        }
        if start is not None:
            since = start - timedelta(minutes=5)
            params["updated_since"] = since.strftime("%Y-%m-%dT%H:%M:%SZ")
        for page in range(1, self.config.marker_scan_pages + 1):
            response = await self.call_api(
                ctx,
                "GET",
                "/api/v2/tickets",
                what="list tickets",
                params={**params, "page": page},
            )
            tickets = json_list(response)
            for ticket in tickets:
                if activity.marker in (ticket.get("tags") or []):
                    return str(ticket["id"])
            if len(tickets) < PAGE:
                break
        return None


@hookimpl
def register_connectors(register: Any) -> None:
    register(FreshdeskConnector)
