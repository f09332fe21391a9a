"""The ``hubspot`` connector: each external Wildix call as one HubSpot call engagement.

Created at the call's first routed event (``IN_PROGRESS``) and updated as it ends and again when
the final record arrives; associated to the matched contact (type 194). Private-app token; the
search endpoints have their own 5 req/s bucket; a ``DAILY`` 429 pauses the connector until the
account's daily reset. Reference: the CRM v3 calls, contacts search and owners APIs.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from relay import ConnectorContext, DeliveryContext, crm, hookimpl, parse_retry_after

STATUS = {
    "in_progress": "IN_PROGRESS",
    "completed": "COMPLETED",
    "missed": "NO_ANSWER",
    "busy": "BUSY",
    "failed": "FAILED",
}
DISPOSITION = {  # HubSpot's default call outcome GUIDs
    "completed": "f240bbac-87c9-4f6e-bf70-924b57d47db7",  # Connected
    "missed": "73a0d17f-1163-4015-bdd5-ec830791da20",  # No answer
    "busy": "9d9162e7-6cf3-4944-bf63-4dff82258764",  # Busy
}
CALL_TO_CONTACT = 194
PHONE_PROPS = ("phone", "mobilephone")
SEARCHABLE_PROPS = (
    "hs_searchable_calculated_phone_number",
    "hs_searchable_calculated_mobile_number",
)


class HubSpotConfig(crm.CrmConfig, kw_only=True):
    token: str  # private app access token (pat-…)
    base_url: str | None = "https://api.hubapi.com"
    # Private apps: 100 (Free/Starter) to 190 (Pro/Enterprise) requests per 10 s.
    rate_limit: crm.RateLimit = crm.RateLimit(requests=100, per=10)
    # search: 5 req/s published; 4 leaves room for network jitter against a rolling window
    search_rate_limit: crm.RateLimit = crm.RateLimit(requests=4, per=1)
    index_lag: crm.Duration = crm.Duration(10)  # new calls take seconds to show in search

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.token.strip():
            raise ValueError("`token` is empty: set the HubSpot private app token")


class HubSpotConnector(crm.CrmConnector):
    type = "hubspot"
    vendor = "HubSpot"
    Config = HubSpotConfig
    config: HubSpotConfig

    # -- HTTP specifics --------------------------------------------------------------------------

    async def auth_headers(self, ctx: ConnectorContext) -> dict[str, str]:
        return {"authorization": f"Bearer {self.config.token}"}

    def auth_failure(self, response: httpx.Response) -> str:
        category = crm.json_object(response).get("category") or "INVALID_AUTHENTICATION"
        return (
            f"the private app token of connector {self.name!r} was rejected (HTTP 401 {category})."
            " Private app tokens do not expire: it was rotated or the app was removed. Put the"
            " current token in config.yaml and run `relay reload`: its deliveries wait and"
            " resume on their own once the token works (`relay circuit close"
            f" {self.name}` sends them at once)"
        )

    def rate_limited(self, response: httpx.Response) -> crm.Limited | None:
        if response.status_code != 429:
            return None
        body = crm.json_object(response)
        reason = str(body.get("message") or "rate limit reached")
        if body.get("policyName") == "DAILY":
            return crm.Limited(True, None, reason)
        wait = parse_retry_after(response.headers.get("retry-after"))
        if wait is None:  # HubSpot rarely sends Retry-After; the window length is the safe wait
            interval = response.headers.get("x-hubspot-ratelimit-interval-milliseconds")
            wait = int(interval) / 1000 if interval and interval.isdigit() else 10.0
        return crm.Limited(False, wait, reason)

    async def check(self, ctx: ConnectorContext) -> None:
        """A one-record read of calls: proves the token and its calls scope."""
        await self.call_api(ctx, "GET", "/crm/v3/objects/calls", what="check", params={"limit": 1})

    # -- the CRM adapter -------------------------------------------------------------------------

    async def search_people(self, number: str, ctx: ConnectorContext) -> list[crm.Person]:
        digits = crm.national_digits(number)
        groups = [
            {"filters": [{"propertyName": p, "operator": "EQ", "value": number}]}
            for p in PHONE_PROPS
        ]
        groups += [
            {"filters": [{"propertyName": p, "operator": "EQ", "value": digits}]}
            for p in SEARCHABLE_PROPS
        ]
        body = {
            "filterGroups": groups,
            "properties": ["firstname", "lastname", "email", *PHONE_PROPS, "hubspot_owner_id"],
            "limit": 20,
        }
        response = await self.call_api(
            ctx,
            "POST",
            "/crm/v3/objects/contacts/search",
            what="contact search",
            bucket="search",
            json=body,
        )
        people = []
        for hit in crm.json_object(response).get("results") or []:
            props = hit.get("properties") or {}
            name = " ".join(filter(None, (props.get("firstname"), props.get("lastname"))))
            people.append(
                crm.Person(
                    id=str(hit["id"]),
                    name=name or props.get("email"),
                    phones=[props[p] for p in PHONE_PROPS if props.get(p)],
                    owner=props.get("hubspot_owner_id"),
                )
            )
        return people

    async def create_person(
        self, number: str, facts: crm.Facts, ctx: ConnectorContext
    ) -> crm.Person:
        props = {"phone": number}
        if facts.remote_name:
            first, _, last = facts.remote_name.partition(" ")
            props |= {"firstname": first, "lastname": last}
        response = await self.call_api(
            ctx,
            "POST",
            "/crm/v3/objects/contacts",
            what="create contact",
            json={"properties": props},
        )
        return crm.Person(
            id=str(crm.json_object(response)["id"]), name=facts.remote_name, phones=[number]
        )

    async def find_user(self, email: str, ctx: ConnectorContext) -> str | None:
        response = await self.call_api(
            ctx,
            "GET",
            "/crm/v3/owners",
            what="owner lookup",
            params={"email": email, "limit": 1},
        )
        results = crm.json_object(response).get("results") or []
        return str(results[0]["id"]) if results else None

    def properties(self, activity: crm.Activity) -> dict[str, str]:
        """Every value a string, as HubSpot's property API wants."""
        facts = activity.facts
        started = activity.started_at
        props = {
            "hs_timestamp": started.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            if started
            else "",
            "hs_call_title": activity.title,
            "hs_call_body": crm.text_to_html(activity.notes),
            # HubSpot knows only these two; an internal call (log_internal) reads as outbound
            "hs_call_direction": "INBOUND" if activity.direction == "inbound" else "OUTBOUND",
            "hs_call_status": STATUS[activity.status],
            "hs_call_from_number": activity.from_number or "",
            "hs_call_to_number": activity.to_number or "",
        }
        if activity.seconds is not None and facts.ended:
            props["hs_call_duration"] = str(round(activity.seconds * 1000))
        if activity.status in DISPOSITION:
            props["hs_call_disposition"] = DISPOSITION[activity.status]
        if activity.recording_urls:
            props["hs_call_recording_url"] = activity.recording_urls[0]
        if activity.owner:
            props["hubspot_owner_id"] = activity.owner
        return props

    async def create_activity(self, activity: crm.Activity, ctx: DeliveryContext) -> str:
        body: dict[str, Any] = {"properties": self.properties(activity)}
        if activity.person is not None:
            body["associations"] = [
                {
                    "to": {"id": activity.person.id},
                    "types": [
                        {
                            "associationCategory": "HUBSPOT_DEFINED",
                            "associationTypeId": CALL_TO_CONTACT,
                        }
                    ],
                }
            ]
        response = await self.call_api(
            ctx, "POST", "/crm/v3/objects/calls", what="create call", json=body
        )
        call_id = str(crm.json_object(response)["id"])
        ctx.log.info("created HubSpot call %s for Wildix call %s", call_id, activity.facts.call_id)
        return call_id

    async def update_activity(
        self, record_id: str, activity: crm.Activity, ctx: DeliveryContext
    ) -> None:
        await self.call_api(
            ctx,
            "PATCH",
            f"/crm/v3/objects/calls/{record_id}",
            what="update call",
            json={"properties": self.properties(activity)},
        )

    async def find_activity(self, activity: crm.Activity, ctx: DeliveryContext) -> str | None:
        body = {
            "filterGroups": [
                {
                    "filters": [
                        {
                            "propertyName": "hs_call_body",
                            "operator": "CONTAINS_TOKEN",
                            "value": activity.marker,
                        }
                    ]
                }
            ],
            "properties": ["hs_call_body"],
            "limit": 10,
        }
        response = await self.call_api(
            ctx,
            "POST",
            "/crm/v3/objects/calls/search",
            what="call search",
            bucket="search",
            json=body,
        )
        for hit in crm.json_object(response).get("results") or []:
            if activity.marker in json.dumps(hit.get("properties") or {}):
                return str(hit["id"])
        return None


@hookimpl
def register_connectors(register: Any) -> None:
    register(HubSpotConnector)
