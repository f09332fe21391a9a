"""The ``dynamics`` connector: each external Wildix call as one Phone Call activity in Microsoft
Dynamics 365 (Dataverse).

Created when ``create_at`` says (by default once the call has ended) and updated when the final
record arrives (``PATCH`` with ``If-Match: *``, so an update never re-creates a record someone
deleted); the write carrying the final data also completes the phone call (``statecode`` 1), so it
leaves the users' open activities (``complete_calls: false`` leaves it open, a write less for a call
created from its final data). A completed phone call is read-only in Dataverse: relay never needs to
write it again, and a write it must repeat (its answer was lost) is checked against the record. The
contact or lead is the regarding record and an activity party (Sender or To recipient, with the
owner's system user on the other side). OAuth 2.0 client credentials against Microsoft Entra ID for
an application user of the environment; the token (about an hour) is cached in the connector state
and renewed before it expires or once on a 401. Dataverse's service protection limits (``429`` with
``Retry-After``, per user over a 5-minute window) pause the whole connector. Reference: Dataverse
Web API v9.2 (phonecall, activityparty, contact, lead, systemuser), Microsoft identity platform
client credentials flow, Dataverse service protection API limits.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import phonenumbers

from relay import (
    ConnectorContext,
    DeliveryContext,
    DeliveryError,
    PermanentError,
    crm,
    hookimpl,
    parse_retry_after,
)

OUTCOME = {
    "in_progress": "In progress",
    "completed": "Answered",
    "missed": "Missed",
    "busy": "Busy",
    "failed": "Failed",
}
PEOPLE = (("contacts", "contact", "contactid"), ("leads", "lead", "leadid"))
PHONE_FIELDS = ("telephone1", "mobilephone")
SUBJECT_MAX = 200  # phonecall.subject
DESCRIPTION_MAX = 2000  # phonecall.description
GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
ENTITY_ID = re.compile(rf"\(({GUID.pattern})\)\s*$")
ODATA = {"OData-MaxVersion": "4.0", "OData-Version": "4.0", "Accept": "application/json"}
# without it a PATCH is an upsert: an update would re-create a phone call someone deleted
UPDATE_ONLY = {"If-Match": "*"}
# phonecall statecode / statuscode: Open 0 / Open 1; Completed 1 / Made 2 or Received 4
REOPEN = {"statecode": 0, "statuscode": 1}
MADE, RECEIVED = 2, 4


def odata_quote(value: str) -> str:
    """An OData string literal: single quotes, a quote inside doubled."""
    return "'" + value.replace("'", "''") + "'"


def spellings(number: str) -> list[str]:
    """How a human may have typed ``number`` into a phone column: Dataverse compares strings as
    stored, so each common form is asked for (and the match confirmed on E.164 by relay)."""
    parsed = phonenumbers.parse(number, None)
    national = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
    forms = [
        number,
        phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL),
        national,
        crm.national_digits(number),
        re.sub(r"\D", "", national),  # the national form with its trunk prefix, digits only
    ]
    return list(dict.fromkeys(forms))


def utc(moment: datetime) -> str:
    """Dataverse keeps date-times to the second, in UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def completed(activity: crm.Activity) -> dict[str, int]:
    """Completed, with the status reason that matches ``directioncode``."""
    return {"statecode": 1, "statuscode": RECEIVED if activity.direction == "inbound" else MADE}


def clip(notes: str, limit: int = DESCRIPTION_MAX) -> str:
    """Notes cut to the column's length, keeping the last line: the marker crash recovery finds."""
    if len(notes) <= limit:
        return notes
    head, _, last = notes.rpartition("\n")
    return head[: max(limit - len(last) - 2, 0)] + "…\n" + last


class DynamicsConfig(crm.CrmConfig, kw_only=True):
    url: str  # the environment, e.g. https://contoso.crm4.dynamics.com
    tenant_id: str  # the Microsoft Entra tenant (directory) id
    client_id: str  # the app registration's application (client) id
    client_secret: str
    login_url: str = "https://login.microsoftonline.com"  # the Entra ID authority host
    scope: str | None = None  # default: <url>/.default
    api_version: str = "v9.2"
    # service protection: 6,000 requests per user in any 5 minutes, i.e. 20/s on average
    rate_limit: crm.RateLimit = crm.RateLimit(requests=15, per=1)
    search_rate_limit: crm.RateLimit = crm.RateLimit(requests=10, per=1)
    limit_pause: crm.Duration = crm.Duration(60)  # a 429 without Retry-After: pause this long
    complete_calls: bool = True  # the final data completes the phone call (statecode 1)

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("url", "login_url"):
            value = getattr(self, key)
            if not value.startswith(("http://", "https://")):
                raise ValueError(
                    f"`{key}` must start with https:// (e.g. https://contoso.crm4.dynamics.com)"
                )
            setattr(self, key, value.rstrip("/"))
        for key in ("tenant_id", "client_id", "client_secret"):
            if not getattr(self, key).strip():
                raise ValueError(f"`{key}` is empty: copy it from the app registration in Entra ID")
        if not re.fullmatch(r"v\d+\.\d+", self.api_version):
            raise ValueError("`api_version` looks like v9.2")
        if self.limit_pause <= 0:
            raise ValueError("`limit_pause` must be positive")

    @property
    def token_scope(self) -> str:
        return self.scope or f"{self.url}/.default"


class DynamicsConnector(crm.oauth.OAuthConnector):
    type = "dynamics"
    vendor = "Dynamics 365"
    Config = DynamicsConfig
    config: DynamicsConfig

    # -- OAuth -----------------------------------------------------------------------------------

    async def fetch_token(self, ctx: ConnectorContext) -> crm.oauth.Token:
        cfg = self.config
        form = {
            "grant_type": "client_credentials",
            "client_id": cfg.client_id,
            "client_secret": cfg.client_secret,
            "scope": cfg.token_scope,
        }
        url = f"{cfg.login_url}/{cfg.tenant_id}/oauth2/v2.0/token"
        body = await self.request_token(ctx, url, form)
        lifetime = float(body.get("expires_in") or 3599)
        return crm.oauth.Token(str(body["access_token"]), cfg.url, time.time() + lifetime)

    def token_refused(self, error: str, description: str, status: int) -> DeliveryError:
        cfg = self.config
        description = description.split(" Trace ID:")[0].strip()  # Entra adds ids and a time
        if error == "invalid_client":
            fix = (
                "`client_secret` must be the secret's value (not its id) and not expired: "
                "Entra ID → App registrations → Certificates & secrets"
            )
        elif error == "unauthorized_client":
            fix = f"`client_id` must be an app registration of tenant {cfg.tenant_id}"
        elif error == "invalid_scope" or "AADSTS500011" in description:
            fix = f"`url` must be the environment's URL (the token's scope was {cfg.token_scope})"
        elif "AADSTS90002" in description or "AADSTS900023" in description:
            fix = "`tenant_id` must be the directory (tenant) id of the app registration"
        else:
            fix = "check `tenant_id`, `client_id`, `client_secret` and `login_url`"
        # a wrong secret (AADSTS7000215), an expired one (AADSTS7000222), an app unknown to the
        # tenant (AADSTS700016) refuse the credentials; a wrong tenant or scope, the request
        credentials = error in ("invalid_client", "unauthorized_client", "invalid_grant")
        return self.refusal(
            f"{error}: {description}", fix, credentials, issuer="Microsoft Entra ID"
        )

    def api_base(self, root: str) -> str:
        return f"{root}/api/data/{self.config.api_version}"

    async def auth_headers(self, ctx: ConnectorContext) -> dict[str, str]:
        return {**ODATA, **await super().auth_headers(ctx)}

    # -- errors and limits -----------------------------------------------------------------------

    @staticmethod
    def error(response: httpx.Response) -> tuple[str, str]:
        """(code, message) of Dataverse's OData error body."""
        body = crm.json_object(response).get("error")
        body = body if isinstance(body, dict) else {}
        return str(body.get("code") or ""), str(body.get("message") or "")

    def auth_failure(self, response: httpx.Response) -> str:
        detail = response.headers.get("www-authenticate", "")[:200] or " ".join(
            self.error(response)
        )
        return (
            f"a freshly issued access token of connector {self.name!r} was rejected too (HTTP 401 "
            f"{detail}): check that the app registration is an application user of the "
            "environment at `url` (Power Platform admin center → Environments → Settings → "
            "Application users): its deliveries wait and resume on their own once the token is "
            f"accepted (`relay circuit close {self.name}` sends them at once)"
        )

    def rate_limited(self, response: httpx.Response) -> crm.Limited | None:
        if response.status_code != 429:
            return None
        code, message = self.error(response)
        wait = parse_retry_after(response.headers.get("retry-after"))
        # the limits count per application user: every delivery of this connector waits
        return crm.Limited(
            True, wait or float(self.config.limit_pause), f"{code} {message}".strip()
        )

    def raise_for(self, response: httpx.Response, what: str) -> None:
        if response.status_code == 403:
            code, message = self.error(response)
            raise PermanentError(
                f"{self.vendor} {what}: HTTP 403 {code} {message}. Give the application user of "
                f"connector {self.name!r} a security role that reads contacts, leads and users "
                "and creates and writes phone calls, then retry the dead deliveries",
                status_code=403,
            )
        super().raise_for(response, what)

    async def check(self, ctx: ConnectorContext) -> None:
        """One phone call: proves the token, the environment and read access to phone calls."""
        params = {"$select": "activityid", "$top": "1"}
        await self.call_api(ctx, "GET", "/phonecalls", what="check", params=params)

    # -- the CRM adapter -------------------------------------------------------------------------

    async def _rows(
        self, ctx: ConnectorContext, entity: str, params: dict[str, str], what: str, bucket: str
    ) -> list[dict[str, Any]]:
        response = await self.call_api(
            ctx, "GET", f"/{entity}", what=what, bucket=bucket, params=params
        )
        return [r for r in crm.json_object(response).get("value") or [] if isinstance(r, dict)]

    def _entity_id(self, response: httpx.Response, what: str) -> str:
        """The new record's id: the ``OData-EntityId`` header of a 204 (or a 201's body)."""
        match = ENTITY_ID.search(response.headers.get("odata-entityid", ""))
        if match:
            return match[1].lower()
        body = crm.json_object(response)
        for key in ("activityid", "contactid"):
            if GUID.fullmatch(str(body.get(key) or "")):
                return str(body[key]).lower()
        raise PermanentError(f"{self.vendor} {what}: no OData-EntityId in the answer")

    async def search_people(self, number: str, ctx: ConnectorContext) -> list[crm.Person]:
        """Active contacts, then open leads, whose phone columns hold one of the number's usual
        spellings; stops at the first match confirmed on E.164."""
        forms = " or ".join(
            f"{field} eq {odata_quote(form)}"
            for form in spellings(number)
            for field in PHONE_FIELDS
        )
        found: list[crm.Person] = []
        for entity, kind, key in PEOPLE:
            params = {
                "$select": f"{key},fullname,{','.join(PHONE_FIELDS)}",
                "$filter": f"({forms}) and statecode eq 0",
                "$top": "50",
            }
            for rec in await self._rows(ctx, entity, params, f"{kind} search", "search"):
                found.append(
                    crm.Person(
                        id=str(rec[key]),
                        kind=kind,
                        name=rec.get("fullname"),
                        phones=[rec[f] for f in PHONE_FIELDS if rec.get(f)],
                    )
                )
            if crm.pick(number, found, self.config.default_region):
                return found
        return found

    async def create_person(
        self, number: str, facts: crm.Facts, ctx: ConnectorContext
    ) -> crm.Person:
        first, last = crm.split_name(facts.remote_name, number)
        body = {"lastname": last, "telephone1": number}
        if first:
            body["firstname"] = first
        response = await self.call_api(ctx, "POST", "/contacts", what="create contact", json=body)
        return crm.Person(
            id=self._entity_id(response, "create contact"), name=facts.remote_name, phones=[number]
        )

    async def find_user(self, email: str, ctx: ConnectorContext) -> str | None:
        params = {
            "$select": "systemuserid",
            "$filter": f"internalemailaddress eq {odata_quote(email)} and isdisabled eq false",
            "$top": "1",
        }
        users = await self._rows(ctx, "systemusers", params, "user lookup", "api")
        return str(users[0]["systemuserid"]) if users else None

    def record(self, activity: crm.Activity, *, create: bool) -> dict[str, Any]:
        facts = activity.facts
        start = activity.started_at or activity.ended_at
        remote = facts.remote_number or facts.destination
        body: dict[str, Any] = {
            "subject": activity.title[:SUBJECT_MAX],
            "description": clip(activity.notes),
            "directioncode": activity.direction != "inbound",  # true: outgoing
            "category": OUTCOME.get(activity.status, activity.status),
        }
        if remote:
            body["phonenumber"] = (crm.to_e164(remote, self.config.default_region) or remote)[:200]
        if start is not None:
            body["actualstart"] = utc(start)
        if facts.ended:
            seconds = round(activity.seconds or 0)
            body["actualdurationminutes"] = math.ceil(seconds / 60)
            if start is not None:  # to the second, like actualstart: the end is start + duration
                body["actualend"] = utc(start.replace(microsecond=0) + timedelta(seconds=seconds))
        if create:
            body |= self._links(activity)
        return body

    def _links(self, activity: crm.Activity) -> dict[str, Any]:
        """Create-only: the regarding record, the parties and the owner."""
        links: dict[str, Any] = {}
        person, owner = activity.person, activity.owner
        parties: list[dict[str, Any]] = []
        if owner is not None:
            if not GUID.fullmatch(owner):
                raise PermanentError(
                    f"{self.vendor}: owner {owner!r} is not a systemuserid (a GUID): fix `owners` "
                    "or `default_owner` in config.yaml, then retry the dead deliveries"
                )
            links["ownerid@odata.bind"] = f"/systemusers({owner})"
            parties.append({"partyid_systemuser@odata.bind": f"/systemusers({owner})"})
        if person is not None:
            ref = f"/{person.kind}s({person.id})"
            links[f"regardingobjectid_{person.kind}@odata.bind"] = ref
            parties.append({f"partyid_{person.kind}@odata.bind": ref})
        # outgoing: our user (first) is the sender; incoming: the caller is
        inbound = activity.direction == "inbound"
        for party in parties:
            ours = "partyid_systemuser@odata.bind" in party
            party["participationtypemask"] = 1 if ours != inbound else 2
        if parties:
            links["phonecall_activity_parties"] = parties
        return links

    def changes(self, activity: crm.Activity, *, complete: bool = True) -> dict[str, Any]:
        """What an update writes: the columns, and with the final data the completed state
        (Dataverse writes the columns first, then changes the state)."""
        body = self.record(activity, create=False)
        if complete and self.config.complete_calls and activity.facts.final:
            body |= completed(activity)
        return body

    def fingerprint(self, activity: crm.Activity, *, create: bool = False) -> str:
        """Of what an update would write, so a change that writes nothing (the links are
        create-only, times are kept to the second) sends nothing: once completed, a phone call is
        read-only. A create writes the final data but cannot complete the phone call (statecode
        is not valid for create): the update right after it does."""
        body = self.changes(activity, complete=not create)
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]

    async def create_activity(self, activity: crm.Activity, ctx: DeliveryContext) -> str:
        response = await self.call_api(
            ctx,
            "POST",
            "/phonecalls",
            what="create phone call",
            json=self.record(activity, create=True),
        )
        call_id = self._entity_id(response, "create phone call")
        ctx.log.info(
            "created Dynamics 365 phone call %s for Wildix call %s", call_id, activity.facts.call_id
        )
        return call_id

    async def update_activity(
        self, record_id: str, activity: crm.Activity, ctx: DeliveryContext
    ) -> None:
        body = self.changes(activity)
        response = await self.call_api(
            ctx,
            "PATCH",
            f"/phonecalls({record_id})",
            what="update phone call",
            json=body,
            headers=UPDATE_ONLY,
            allow=(400,),
        )
        if response.status_code == 400:
            await self._update_refused(record_id, body, response, ctx)

    async def _update_refused(
        self,
        record_id: str,
        body: dict[str, Any],
        refused: httpx.Response,
        ctx: DeliveryContext,
    ) -> None:
        """A refused update: the phone call may be completed, hence read-only. Completed by an
        earlier attempt of this very final write whose answer was lost (a crash, a 500 after the
        commit), it already holds the write: done. Completed with other data (a correction that
        came after the final data, e.g. a legacy call's start after its end, or someone completed
        it in Dynamics mid-call), it is reopened and written, which completes it again if final.
        """
        path = f"/phonecalls({record_id})"
        if "statecode" in body:  # a final write: an earlier attempt may have made it
            columns = ",".join(dict.fromkeys([*body, "statuscode"]))
            current = crm.json_object(
                await self.call_api(
                    ctx, "GET", path, what="phone call lookup", params={"$select": columns}
                )
            )
            if current.get("statecode", 0) == 0:  # open: the refusal is about the data itself
                self.raise_for(refused, "update phone call")
            if all(current.get(key) == value for key, value in body.items()):
                ctx.log.info("Dynamics 365 phone call %s already holds this update", record_id)
                return
        ctx.log.info("reopening completed Dynamics 365 phone call %s to update it", record_id)
        for what, change in (("reopen phone call", REOPEN), ("update phone call", body)):
            await self.call_api(ctx, "PATCH", path, what=what, json=change, headers=UPDATE_ONLY)

    async def find_activity(self, activity: crm.Activity, ctx: DeliveryContext) -> str | None:
        """Crash recovery: the phone call whose description carries our marker. A $filter reads
        the database itself, so a record just created is found at once (no index lag)."""
        params = {
            "$select": "activityid,description",
            "$filter": f"contains(description,{odata_quote(activity.marker)})",
            "$top": "5",
        }
        for rec in await self._rows(ctx, "phonecalls", params, "phone call lookup", "search"):
            if activity.marker in (rec.get("description") or ""):
                return str(rec["activityid"])
        return None


@hookimpl
def register_connectors(register: Any) -> None:
    register(DynamicsConnector)
