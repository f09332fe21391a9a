"""The ``pipedrive`` connector: each external Wildix call as one Pipedrive call log.

Call logs cannot be updated, so each is written once, when the call's final data is known: the
legacy ``call:end``, or the current generation's final record (``call:completed``; or its live
end with ``wait_for_record: false``). Person search through the v2 search API; API token
(``x-api-token``) or an OAuth bearer token; ``x-ratelimit-*`` and daily budgets respected.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, ClassVar

import httpx

from relay import ConnectorContext, DeliveryContext, crm, hookimpl, parse_retry_after

OUTCOME = {"completed": "connected", "missed": "no_answer", "busy": "busy", "failed": "no_answer"}
PAGE = 50


class PipedriveConfig(crm.CrmConfig, kw_only=True):
    earliest_create_at: ClassVar[crm.CreateAt] = "end"
    create_at: crm.CreateAt = "record"  # a call log cannot be updated: the final data
    api_token: str | None = None  # Personal preferences → API
    access_token: str | None = None  # an OAuth bearer token, instead of api_token
    company_domain: str | None = None  # acme → https://acme.pipedrive.com
    base_url: str | None = None  # default: the company domain, else https://api.pipedrive.com
    # Essential plan, API token: 20 requests per 2 s; search: 10 per 2 s on every plan.
    rate_limit: crm.RateLimit = crm.RateLimit(requests=20, per=2)
    search_rate_limit: crm.RateLimit = crm.RateLimit(requests=10, per=2)
    marker_scan_pages: int = 4  # crash recovery: recent call logs to scan (50 per page)

    def __post_init__(self) -> None:
        if self.base_url is None:
            domain = (self.company_domain or "").strip()
            self.base_url = (
                f"https://{domain}.pipedrive.com" if domain else "https://api.pipedrive.com"
            )
        super().__post_init__()
        if bool(self.api_token) == bool(self.access_token):
            raise ValueError("set exactly one of `api_token` and `access_token`")
        if self.marker_scan_pages < 1:
            raise ValueError("`marker_scan_pages` must be at least 1")
        for key, value in [*self.owners.items(), ("default_owner", self.default_owner)]:
            if value is not None and not str(value).isdigit():
                raise ValueError(f"owner {key!r}: Pipedrive user ids are numbers, got {value!r}")


def _time(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")


class PipedriveConnector(crm.CrmConnector):
    type = "pipedrive"
    vendor = "Pipedrive"
    Config = PipedriveConfig
    config: PipedriveConfig
    updates = False

    # -- HTTP specifics --------------------------------------------------------------------------

    async def auth_headers(self, ctx: ConnectorContext) -> dict[str, str]:
        if self.config.api_token:
            return {"x-api-token": self.config.api_token}
        return {"authorization": f"Bearer {self.config.access_token}"}

    def auth_failure(self, response: httpx.Response) -> str:
        error = crm.json_object(response).get("error") or "unauthorized access"
        if self.config.api_token:
            hint = (
                "regenerating a Pipedrive API token invalidates the old one at once: put the"
                " current token (Personal preferences → API) in config.yaml"
            )
        else:
            hint = (
                "the OAuth access token expired or was revoked, and a static `access_token`"
                " cannot be refreshed: put a valid one in config.yaml"
            )
        return (
            f"credentials of connector {self.name!r} rejected (HTTP 401 {error}); {hint}"
            " and run `relay reload`: its deliveries wait and resume on their own once the"
            f" token works (`relay circuit close {self.name}` sends them at once)"
        )

    def rate_limited(self, response: httpx.Response) -> crm.Limited | None:
        if response.status_code != 429:
            return None
        body = crm.json_object(response)
        reason = str(body.get("error") or "request over limit")
        if response.headers.get("x-daily-requests-left") == "0" or "daily" in reason.lower():
            return crm.Limited(True, None, reason)
        wait = parse_retry_after(response.headers.get("retry-after"))
        if wait is None:
            wait = parse_retry_after(response.headers.get("x-ratelimit-reset")) or 2.0
        return crm.Limited(False, wait, reason)

    async def check(self, ctx: ConnectorContext) -> None:
        await self.call_api(ctx, "GET", "/v1/users/me", what="check")

    # -- the CRM adapter -------------------------------------------------------------------------

    async def _search(self, ctx: ConnectorContext, term: str, exact: bool) -> list[crm.Person]:
        params = {"term": term, "fields": "phone", "exact_match": str(exact).lower(), "limit": 20}
        response = await self.call_api(
            ctx,
            "GET",
            "/api/v2/persons/search",
            what="person search",
            bucket="search",
            params=params,
        )
        people = []
        for entry in (crm.json_object(response).get("data") or {}).get("items") or []:
            item = entry.get("item") or {}
            phones = [
                p if isinstance(p, str) else (p or {}).get("value")
                for p in item.get("phones") or []
            ]
            owner = (item.get("owner") or {}).get("id")
            people.append(
                crm.Person(
                    id=str(item["id"]),
                    name=item.get("name"),
                    phones=[p for p in phones if p],
                    owner=str(owner) if owner is not None else None,
                )
            )
        return people

    async def search_people(self, number: str, ctx: ConnectorContext) -> list[crm.Person]:
        """Exact E.164 first; Pipedrive does not normalise phones, so then the national digits."""
        exact = await self._search(ctx, number, True)
        if crm.pick(number, exact, self.config.default_region):
            return exact
        return exact + await self._search(ctx, crm.national_digits(number), False)

    async def create_person(
        self, number: str, facts: crm.Facts, ctx: ConnectorContext
    ) -> crm.Person:
        name = facts.remote_name or number
        body = {"name": name, "phone": [{"value": number, "primary": True, "label": "work"}]}
        response = await self.call_api(ctx, "POST", "/v1/persons", what="create person", json=body)
        return crm.Person(
            id=str(crm.json_object(response)["data"]["id"]), name=name, phones=[number]
        )

    async def find_user(self, email: str, ctx: ConnectorContext) -> str | None:
        response = await self.call_api(
            ctx,
            "GET",
            "/v1/users/find",
            what="user lookup",
            params={"term": email, "search_by_email": 1},
        )
        for user in crm.json_object(response).get("data") or []:
            if str(user.get("email", "")).lower() == email:
                return str(user["id"])
        return None

    def call_log(self, activity: crm.Activity) -> dict[str, Any]:
        start = activity.started_at or activity.ended_at
        assert start is not None  # created at the end: an event time is always known
        seconds = round(activity.seconds or 0)
        end = activity.ended_at or start + timedelta(seconds=seconds)
        body: dict[str, Any] = {
            "outcome": OUTCOME.get(activity.status, "no_answer"),
            "from_phone_number": activity.from_number or "",
            "to_phone_number": activity.to_number or activity.from_number or "unknown",
            "start_time": _time(start),
            "end_time": _time(max(end, start)),
            "duration": str(seconds),
            "subject": activity.title,
            "note": crm.text_to_html(activity.notes),
        }
        if activity.person is not None:
            body["person_id"] = int(activity.person.id)
        if activity.owner is not None:
            body["user_id"] = int(activity.owner)
        return body

    async def create_activity(self, activity: crm.Activity, ctx: DeliveryContext) -> str:
        response = await self.call_api(
            ctx,
            "POST",
            "/v1/callLogs",
            what="create call log",
            json=self.call_log(activity),
        )
        log_id = str(crm.json_object(response)["data"]["id"])
        ctx.log.info(
            "created Pipedrive call log %s for Wildix call %s", log_id, activity.facts.call_id
        )
        return log_id

    async def find_activity(self, activity: crm.Activity, ctx: DeliveryContext) -> str | None:
        """Call logs cannot be searched: scan the most recent ones for our marker."""
        for page in range(self.config.marker_scan_pages):
            response = await self.call_api(
                ctx,
                "GET",
                "/v1/callLogs",
                what="list call logs",
                params={"start": page * PAGE, "limit": PAGE},
            )
            body = crm.json_object(response)
            for log in body.get("data") or []:
                if activity.marker in (log.get("note") or ""):
                    return str(log["id"])
            more = (body.get("additional_data") or {}).get("pagination") or {}
            if not more.get("more_items_in_collection"):
                break
        return None


@hookimpl
def register_connectors(register: Any) -> None:
    register(PipedriveConnector)
