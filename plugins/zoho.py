"""The ``zoho`` connector: each external Wildix call as one record of Zoho CRM's Calls module.

Zoho refuses to change ``Call_Type`` (Inbound / Outbound / Missed) after a call is created, so the
record is created once the call has ended and its type is known, and updated when the final
record arrives (exact duration, notes). A Contact is linked with ``Who_Id``, a Lead with
``What_Id`` + ``$se_module``. OAuth refresh-token flow against the account's data centre; the
access token (one hour) is cached in the connector state and renewed before it expires or once
on ``INVALID_TOKEN``. A 429 pauses the connector: Zoho's credits and concurrency are per account.
Reference: Zoho CRM API v8 (records, search, users) and Zoho Accounts OAuth.
"""

from __future__ import annotations

import re
import time
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import httpx

from relay import (
    ConnectorContext,
    DeliveryContext,
    DeliveryError,
    PermanentError,
    RetryableError,
    crm,
    hookimpl,
    parse_retry_after,
)

# token endpoint errors that refuse the credentials: the client, or the refresh token (revoked)
CREDENTIALS_REFUSED = frozenset({"invalid_client", "invalid_client_secret", "invalid_code"})
SCOPES = (
    "ZohoCRM.modules.calls.ALL,ZohoCRM.modules.contacts.ALL,ZohoCRM.modules.leads.READ,"
    "ZohoCRM.users.READ"
)
PHONE_FIELDS = ("Phone", "Mobile", "Home_Phone", "Other_Phone", "Asst_Phone")
USER_PAGES = 10  # owner lookup: at most 2,000 active users


def call_type(activity: crm.Activity) -> str:
    if activity.direction == "inbound":
        return "Inbound" if activity.status == "completed" else "Missed"
    return "Outbound"  # Zoho has no internal type: a logged internal call reads as outbound


def mm_ss(seconds: float | None) -> str:
    """Call_Duration as Zoho writes it: minutes and seconds, "02:05" (minutes may exceed 59)."""
    m, s = divmod(round(seconds or 0), 60)
    return "999:59" if m > 999 else f"{m:02d}:{s:02d}"


class ZohoConfig(crm.CrmConfig, kw_only=True):
    earliest_create_at: ClassVar[crm.CreateAt] = "end"  # Call_Type is fixed at creation
    client_id: str
    client_secret: str
    refresh_token: str
    accounts_url: str = "https://accounts.zoho.com"  # the data centre: .eu, .in, .com.au, ...
    base_url: str | None = None  # default: the api_domain of the token response
    api_version: str = "v8"
    # Zoho counts credits per 24 hours and limits concurrent requests (5 on Free, 25 Ultimate).
    rate_limit: crm.RateLimit = crm.RateLimit(requests=10, per=1)
    search_rate_limit: crm.RateLimit = crm.RateLimit(requests=5, per=1)
    index_lag: crm.Duration = crm.Duration(10)
    limit_pause: crm.Duration = crm.Duration(60)  # a 429 that names no wait: pause this long

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.accounts_url.startswith(("http://", "https://")):
            raise ValueError(
                "`accounts_url` must start with https:// (e.g. https://accounts.zoho.eu)"
            )
        self.accounts_url = self.accounts_url.rstrip("/")
        if not re.fullmatch(r"v\d+", self.api_version):
            raise ValueError("`api_version` looks like v8")
        if self.limit_pause <= 0:
            raise ValueError("`limit_pause` must be positive")
        for key in ("client_id", "client_secret", "refresh_token"):
            if not getattr(self, key).strip():
                raise ValueError(f"`{key}` is empty: set it from the Zoho API console")


class ZohoConnector(crm.oauth.OAuthConnector):
    type = "zoho"
    vendor = "Zoho CRM"
    Config = ZohoConfig
    config: ZohoConfig

    auth_scheme = "Zoho-oauthtoken"

    # -- OAuth -----------------------------------------------------------------------------------

    async def fetch_token(self, ctx: ConnectorContext) -> crm.oauth.Token:
        cfg = self.config
        form = {
            "grant_type": "refresh_token",
            "client_id": cfg.client_id,
            "client_secret": cfg.client_secret,
            "refresh_token": cfg.refresh_token,
        }
        body = await self.request_token(ctx, f"{cfg.accounts_url}/oauth/v2/token", form)
        lifetime = float(body.get("expires_in") or 3600)
        root = str(body.get("api_domain") or "https://www.zohoapis.com").rstrip("/")
        return crm.oauth.Token(str(body["access_token"]), root, time.time() + lifetime)

    def token_refused(self, error: str, description: str, status: int) -> DeliveryError:
        where = f"accounts_url {self.config.accounts_url}"
        if "too many requests" in description.lower():
            return RetryableError(
                f"Zoho refused a new access token for connector {self.name!r}: {description} "
                "(Zoho issues at most ten per ten minutes)",
                retry_after=60.0,
                status_code=status,
            )
        if error in ("invalid_client", "invalid_client_secret"):
            fix = (
                f"`client_id` / `client_secret` are not a client of this data centre ({where}): "
                "copy them from the Zoho API console of the account's data centre"
            )
        elif error == "invalid_code":
            fix = (
                "the refresh token was revoked, expired or belongs to another data centre: "
                f"generate a new grant (scopes {SCOPES}) in the Zoho API console, exchange it "
                f"for a refresh token, put it in `refresh_token`, and check {where}"
            )
        else:  # the request itself: e.g. unsupported_grant_type
            fix = f"check `client_id`, `refresh_token` and {where}"
        detail = f"{error}{': ' + description if description else ''}"
        return self.refusal(detail, fix, error in CREDENTIALS_REFUSED)

    def token_expired(self, response: httpx.Response) -> bool:
        return crm.json_object(response).get("code") != "OAUTH_SCOPE_MISMATCH"

    def api_base(self, root: str) -> str:
        return f"{root}/crm/{self.config.api_version}"

    def auth_failure(self, response: httpx.Response) -> str:
        body = crm.json_object(response)
        code = body.get("code") or "INVALID_TOKEN"
        if code == "OAUTH_SCOPE_MISMATCH":
            return (
                f"the Zoho grant of connector {self.name!r} lacks a scope this request needs "
                f"(HTTP 401 OAUTH_SCOPE_MISMATCH). Generate a new grant with the scopes {SCOPES}, "
                "put its refresh token in config.yaml and run `relay reload`: its deliveries "
                "wait and resume on their own once the grant has the scopes (`relay circuit "
                f"close {self.name}` sends them at once)"
            )
        return (
            f"a freshly issued access token of connector {self.name!r} was rejected too (HTTP "
            f"401 {code}: {body.get('message', '')}): check that the Zoho user of the grant is "
            "active and has CRM access: its deliveries wait and resume on their own once the "
            f"token is accepted (`relay circuit close {self.name}` sends them at once)"
        )

    def rate_limited(self, response: httpx.Response) -> crm.Limited | None:
        if response.status_code != 429:
            return None
        body = crm.json_object(response)
        details = body.get("details") if isinstance(body.get("details"), dict) else {}
        wait = parse_retry_after(response.headers.get("retry-after")) or parse_retry_after(
            str(details.get("retry_after") or "")
        )
        reason = f"{body.get('code') or 'TOO_MANY_REQUESTS'} {body.get('message') or ''}".strip()
        # the account's credits or concurrency: hold every delivery, do not burn attempts
        return crm.Limited(True, wait or float(self.config.limit_pause), reason)

    async def check(self, ctx: ConnectorContext) -> None:
        """One Calls record: proves the token, the data centre and the Calls scope."""
        await self.call_api(
            ctx, "GET", "/Calls", what="check", params={"fields": "Subject", "per_page": 1}
        )

    # -- the CRM adapter -------------------------------------------------------------------------

    @staticmethod
    def result(response: httpx.Response, what: str) -> str:
        """The id of the one record written, or the per-record error Zoho gave for it."""
        data = crm.json_object(response).get("data") or [{}]
        first = data[0] if isinstance(data[0], dict) else {}
        details = first.get("details") or {}
        if first.get("status") != "success" or not details.get("id"):
            raise PermanentError(
                f"Zoho CRM {what}: {first.get('code', 'no result')} {first.get('message', '')} "
                f"{details}".strip()
            )
        return str(details["id"])

    async def _search(
        self, ctx: ConnectorContext, module: str, params: dict[str, str]
    ) -> list[dict[str, Any]]:
        response = await self.call_api(
            ctx, "GET", f"/{module}/search", what=f"{module} search", bucket="search", params=params
        )
        if response.status_code == 204:  # Zoho's "no match": an empty body
            return []
        return list(crm.json_object(response).get("data") or [])

    async def search_people(self, number: str, ctx: ConnectorContext) -> list[crm.Person]:
        """Contacts first, then Leads; the E.164 form, then the national digits (Zoho does not
        normalise what humans typed). Stops at the first confirmed match."""
        found: list[crm.Person] = []
        for module, kind in (("Contacts", "contact"), ("Leads", "lead")):
            for term in (number, crm.national_digits(number)):
                for rec in await self._search(ctx, module, {"phone": term}):
                    owner = (rec.get("Owner") or {}).get("id")
                    found.append(
                        crm.Person(
                            id=str(rec["id"]),
                            kind=kind,
                            name=rec.get("Full_Name"),
                            phones=[rec[f] for f in PHONE_FIELDS if rec.get(f)],
                            owner=str(owner) if owner else None,
                        )
                    )
                if crm.pick(number, found, self.config.default_region):
                    return found
        return found

    async def create_person(
        self, number: str, facts: crm.Facts, ctx: ConnectorContext
    ) -> crm.Person:
        first, last = crm.split_name(facts.remote_name, number)
        record = {"Last_Name": last, "Phone": number}
        if first:
            record["First_Name"] = first
        response = await self.call_api(
            ctx, "POST", "/Contacts", what="create contact", json={"data": [record]}
        )
        return crm.Person(
            id=self.result(response, "create contact"), name=facts.remote_name, phones=[number]
        )

    async def find_user(self, email: str, ctx: ConnectorContext) -> str | None:
        for page in range(1, USER_PAGES + 1):
            params = {"type": "ActiveUsers", "page": page, "per_page": 200}
            response = await self.call_api(ctx, "GET", "/users", what="user lookup", params=params)
            body = crm.json_object(response)
            for user in body.get("users") or []:
                if str(user.get("email", "")).lower() == email:
                    return str(user["id"])
            if not (body.get("info") or {}).get("more_records"):
                break
        return None

    def record(self, activity: crm.Activity, *, create: bool) -> dict[str, Any]:
        start = activity.started_at or activity.ended_at
        assert start is not None  # created at the end: an event time is always known
        body: dict[str, Any] = {
            "Subject": activity.title,
            "Description": activity.notes,
            "Call_Start_Time": start.astimezone(ZoneInfo(self.config.timezone)).isoformat(
                timespec="seconds"
            ),
            "Call_Duration": mm_ss(activity.seconds),
        }
        if not create:
            return body  # Call_Type cannot change, nor the owner of a completed call
        body["Call_Type"] = call_type(activity)
        if body["Call_Type"] == "Outbound":
            body["Outgoing_Call_Status"] = "Completed"
        person = activity.person
        if person is not None and person.kind == "lead":
            body |= {"What_Id": {"id": person.id}, "$se_module": "Leads"}
        elif person is not None:
            body["Who_Id"] = {"id": person.id}
        if activity.owner:
            body["Owner"] = {"id": activity.owner}
        return body

    async def create_activity(self, activity: crm.Activity, ctx: DeliveryContext) -> str:
        response = await self.call_api(
            ctx,
            "POST",
            "/Calls",
            what="create call",
            json={"data": [self.record(activity, create=True)]},
        )
        call_id = self.result(response, "create call")
        ctx.log.info("created Zoho call %s for Wildix call %s", call_id, activity.facts.call_id)
        return call_id

    async def update_activity(
        self, record_id: str, activity: crm.Activity, ctx: DeliveryContext
    ) -> None:
        response = await self.call_api(
            ctx,
            "PUT",
            f"/Calls/{record_id}",
            what="update call",
            json={"data": [self.record(activity, create=False)]},
        )
        self.result(response, "update call")

    async def find_activity(self, activity: crm.Activity, ctx: DeliveryContext) -> str | None:
        """Crash recovery: the call whose Description carries our marker (a word search)."""
        for rec in await self._search(ctx, "Calls", {"word": activity.marker}):
            if activity.marker in (rec.get("Description") or ""):
                return str(rec["id"])
        return None


@hookimpl
def register_connectors(register: Any) -> None:
    register(ZohoConnector)
