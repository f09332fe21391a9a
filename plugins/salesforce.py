"""The ``salesforce`` connector: each external Wildix call as one Salesforce Task of subtype Call.

Created at the call's first routed event (``In Progress``) and updated as it ends and again when
the final record arrives (``Completed``, duration, result). ``CallObject`` holds the Wildix call
id: the Task is looked up by it (SOQL) before one is created, so a create is idempotent even if
relay's own links were lost. OAuth: client credentials, JWT bearer or refresh token; the token is
cached in the connector state and renewed once on ``401 INVALID_SESSION_ID``. The org's rolling
24-hour request limit (``403 REQUEST_LIMIT_EXCEEDED``) pauses the connector; the usage header
``Sforce-Limit-Info`` is kept in the connector state. Reference: REST API, Task, SOSL and SOQL.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from relay import (
    ConnectorContext,
    DeliveryContext,
    DeliveryError,
    PermanentError,
    crm,
    hookimpl,
)

CALL_TYPE = {"inbound": "Inbound", "outbound": "Outbound", "internal": "Internal"}
RESULT = {"completed": "Answered", "missed": "No answer", "busy": "Busy", "failed": "Failed"}
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# token endpoint errors that refuse the credentials (the app, the grant, the user), not the request
CREDENTIALS_REFUSED = frozenset(
    {
        "invalid_client",
        "invalid_client_id",
        "invalid_client_credentials",
        "invalid_grant",
        "inactive_user",
        "inactive_org",
    }
)
SOSL_RESERVED = frozenset("\\&|!(){}[]^\"~*?:'+-")
USAGE = re.compile(r"api-usage=(\d+)/(\d+)")
USAGE_EVERY = 60.0  # seconds between writes of the usage header to the connector state
PEOPLE_FIELDS = "Id, Name, Phone, MobilePhone, OwnerId"


def sosl_escape(term: str) -> str:
    """SOSL's reserved characters (a ``+`` in E.164 among them) escaped with a backslash."""
    return "".join(f"\\{c}" if c in SOSL_RESERVED else c for c in term)


def soql_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def load_key(pem: str | None, path: str | None) -> RSAPrivateKey:
    """The JWT signing key, from ``private_key`` (PEM text, e.g. from the environment) or a file."""
    if path:
        try:
            data = Path(path).expanduser().read_bytes()
        except OSError as exc:
            raise ValueError(f"`private_key_file`: cannot read {path}: {exc.strerror}") from None
    else:
        text = pem or ""
        if "\n" not in text.strip():
            text = text.replace("\\n", "\n")  # a PEM squeezed onto one line of an env file
        data = text.encode()
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ValueError(
            "the JWT private key is not an unencrypted PEM private key "
            "(openssl genrsa -out salesforce.key 2048)"
        ) from None
    if not isinstance(key, RSAPrivateKey):
        raise ValueError("the JWT private key must be an RSA key (Salesforce signs with RS256)")
    return key


class SalesforceConfig(crm.CrmConfig, kw_only=True):
    client_id: str  # the app's consumer key
    client_secret: str | None = None  # client credentials / refresh token flows
    username: str | None = None  # JWT bearer flow: the API user
    private_key: str | None = None  # JWT bearer flow: PEM text (e.g. ${SALESFORCE_JWT_KEY})
    private_key_file: str | None = None  # ... or a PEM file
    refresh_token: str | None = None  # refresh token flow
    login_url: str = "https://login.salesforce.com"  # the token endpoint's host
    audience: str | None = None  # JWT `aud`; default: login_url
    base_url: str | None = None  # default: the instance_url of the token response
    api_version: str = "v67.0"
    # Salesforce has no per-second limit, only the org's 24-hour total: these pace the budget.
    rate_limit: crm.RateLimit = crm.RateLimit(requests=20, per=1)
    search_rate_limit: crm.RateLimit = crm.RateLimit(requests=10, per=1)
    limit_pause: crm.Duration = crm.Duration(1800)  # REQUEST_LIMIT_EXCEEDED: try again after

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.login_url.startswith(("http://", "https://")):
            raise ValueError("`login_url` must start with http:// or https://")
        self.login_url = self.login_url.rstrip("/")
        if not re.fullmatch(r"v\d+\.\d", self.api_version):
            raise ValueError("`api_version` looks like v67.0")
        if self.limit_pause <= 0:
            raise ValueError("`limit_pause` must be positive")
        if self.private_key and self.private_key_file:
            raise ValueError("set `private_key` or `private_key_file`, not both")
        flow = self.flow
        if flow == "jwt_bearer":
            if not self.username:
                raise ValueError("the JWT bearer flow needs `username` (the API user)")
            load_key(self.private_key, self.private_key_file)
        elif flow == "client_credentials" and not self.client_secret:
            raise ValueError(
                "set `client_secret` (client credentials flow), `username` and "
                "`private_key_file` (JWT bearer flow), or `refresh_token` (refresh token flow)"
            )

    @property
    def flow(self) -> str:
        if self.refresh_token:
            return "refresh_token"
        if self.private_key or self.private_key_file:
            return "jwt_bearer"
        return "client_credentials"


class SalesforceConnector(crm.oauth.OAuthConnector):
    type = "salesforce"
    vendor = "Salesforce"
    Config = SalesforceConfig
    config: SalesforceConfig

    def __init__(self, name: str, config: SalesforceConfig) -> None:
        super().__init__(name, config)
        self._key = (
            load_key(config.private_key, config.private_key_file)
            if config.flow == "jwt_bearer"
            else None
        )
        self.api_usage: str | None = None  # the last Sforce-Limit-Info usage seen
        self._usage_saved = 0.0

    # -- OAuth -----------------------------------------------------------------------------------

    async def fetch_token(self, ctx: ConnectorContext) -> crm.oauth.Token:
        cfg = self.config
        form = {"client_id": cfg.client_id}
        if cfg.flow == "refresh_token":
            form |= {"grant_type": "refresh_token", "refresh_token": str(cfg.refresh_token)}
        elif cfg.flow == "jwt_bearer":
            claims = {
                "iss": cfg.client_id,
                "sub": cfg.username,
                "aud": cfg.audience or cfg.login_url,
                "exp": int(time.time()) + 150,  # Salesforce accepts at most 3 minutes ahead
            }
            form = {"grant_type": JWT_GRANT, "assertion": jwt.encode(claims, self._key, "RS256")}
        else:
            form["grant_type"] = "client_credentials"
        if cfg.client_secret and cfg.flow != "jwt_bearer":
            form["client_secret"] = cfg.client_secret
        body = await self.request_token(ctx, f"{cfg.login_url}/services/oauth2/token", form)
        return crm.oauth.Token(str(body["access_token"]), str(body["instance_url"]).rstrip("/"))

    def token_refused(self, error: str, description: str, status: int) -> DeliveryError:
        flow = self.config.flow
        if error in ("invalid_client", "invalid_client_id", "invalid_client_credentials"):
            fix = "`client_id` / `client_secret` must be the app's consumer key and secret"
        elif error not in CREDENTIALS_REFUSED:  # e.g. invalid_request: not this domain
            fix = "check `login_url` (your My Domain for client credentials) and the app's flows"
        elif error in ("inactive_user", "inactive_org"):
            fix = "the API user or the org was deactivated in Salesforce: activate it"
        elif flow == "refresh_token":
            fix = (
                "the refresh token was revoked or expired: authorize the connected app again "
                "and put its new refresh token in `refresh_token`"
            )
        elif flow == "jwt_bearer":
            fix = (
                f"check that {self.config.username} is pre-authorized for the app (admin-approved "
                "users, via a profile or permission set), that the certificate uploaded to the "
                "app matches the private key, and `login_url` / `audience`"
            )
        else:
            fix = (
                "enable the client credentials flow on the app with a run-as user, and set "
                "`login_url` to your My Domain (https://<domain>.my.salesforce.com)"
            )
        return self.refusal(
            f"{flow} flow: {error}: {description}", fix, error in CREDENTIALS_REFUSED
        )

    def api_base(self, root: str) -> str:
        return f"{root}/services/data/{self.config.api_version}"

    # -- errors and limits -----------------------------------------------------------------------

    @staticmethod
    def errors(response: httpx.Response) -> tuple[str, str]:
        """(errorCode, message) of Salesforce's JSON error array."""
        try:
            data = response.json()
        except ValueError:
            return "", ""
        first = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}
        return str(first.get("errorCode") or ""), str(first.get("message") or "")

    def auth_failure(self, response: httpx.Response) -> str:
        code, message = self.errors(response)
        return (
            f"a freshly issued access token of connector {self.name!r} was rejected too (HTTP 401 "
            f"{code or 'INVALID_SESSION_ID'}: {message}): check the app's OAuth policies (IP "
            "relaxation, permitted users) and that the API user is active: its deliveries wait "
            "and resume on their own once the token is accepted (`relay circuit close "
            f"{self.name}` sends them at once)"
        )

    def rate_limited(self, response: httpx.Response) -> crm.Limited | None:
        code, message = self.errors(response)
        self._note_usage(response)
        if code == "REQUEST_LIMIT_EXCEEDED":
            reason = f"{code} {message}".strip()
            if self.api_usage:
                reason += f" (api-usage={self.api_usage})"
            if "concurrent" in message.lower():  # long requests in flight: a short wait
                return crm.Limited(False, 30.0, reason)
            return crm.Limited(True, float(self.config.limit_pause), reason)
        if code == "UNABLE_TO_LOCK_ROW":  # a record lock, not a limit: it clears in moments
            return crm.Limited(False, 2.0, f"{code} {message}")
        return super().rate_limited(response)

    def _note_usage(self, response: httpx.Response) -> bool:
        match = USAGE.search(response.headers.get("sforce-limit-info", ""))
        if not match:
            return False
        self.api_usage = f"{match[1]}/{match[2]}"
        return True

    async def observe(self, response: httpx.Response, ctx: ConnectorContext) -> None:
        """Keep the org's API usage in the connector state (and warn above 90 %)."""
        if not self._note_usage(response) or time.monotonic() - self._usage_saved < USAGE_EVERY:
            return
        self._usage_saved = time.monotonic()
        used, limit = (int(n) for n in str(self.api_usage).split("/"))
        if limit and used >= 0.9 * limit:
            ctx.log.warning("Salesforce API usage at %s of the org's 24-hour limit", self.api_usage)
        await self.update_state(
            ctx, api_usage=self.api_usage, api_usage_at=datetime.now(UTC).isoformat("T", "seconds")
        )

    async def check(self, ctx: ConnectorContext) -> None:
        """A one-row Task query: proves the token, the API version and read access to Tasks."""
        await self.query(ctx, "SELECT Id FROM Task LIMIT 1", "check")

    # -- the CRM adapter -------------------------------------------------------------------------

    async def query(self, ctx: ConnectorContext, soql: str, what: str) -> list[dict[str, Any]]:
        response = await self.call_api(ctx, "GET", "/query", what=what, params={"q": soql})
        return list(crm.json_object(response).get("records") or [])

    async def search_people(self, number: str, ctx: ConnectorContext) -> list[crm.Person]:
        """SOSL over phone fields, for the E.164 form or the national digits (how humans type)."""
        term = f"{sosl_escape(number)} OR {sosl_escape(crm.national_digits(number))}"
        sosl = (
            f"FIND {{{term}}} IN PHONE FIELDS RETURNING Contact({PEOPLE_FIELDS}), "
            f"Lead({PEOPLE_FIELDS} WHERE IsConverted = false)"
        )
        response = await self.call_api(
            ctx, "GET", "/search/", what="phone search", bucket="search", params={"q": sosl}
        )
        people = []
        for rec in crm.json_object(response).get("searchRecords") or []:
            kind = (rec.get("attributes") or {}).get("type")
            people.append(
                crm.Person(
                    id=str(rec["Id"]),
                    kind="contact" if kind == "Contact" else "lead",
                    name=rec.get("Name"),
                    phones=[p for p in (rec.get("Phone"), rec.get("MobilePhone")) if p],
                    owner=rec.get("OwnerId"),
                )
            )
        return people

    async def create_person(
        self, number: str, facts: crm.Facts, ctx: ConnectorContext
    ) -> crm.Person:
        first, last = crm.split_name(facts.remote_name, number)
        body = {"LastName": last, "Phone": number}
        if first:
            body["FirstName"] = first
        response = await self.call_api(
            ctx, "POST", "/sobjects/Contact", what="create contact", json=body
        )
        return crm.Person(
            id=str(crm.json_object(response)["id"]), name=facts.remote_name, phones=[number]
        )

    async def find_user(self, email: str, ctx: ConnectorContext) -> str | None:
        soql = f"SELECT Id FROM User WHERE Email = {soql_quote(email)} AND IsActive = true LIMIT 1"
        users = await self.query(ctx, soql, "user lookup")
        return str(users[0]["Id"]) if users else None

    @staticmethod
    def call_object(activity: crm.Activity) -> str:
        leg = activity.facts.leg
        return (activity.facts.call_id + (f" leg {leg}" if leg is not None else ""))[:255]

    def fields(self, activity: crm.Activity, *, create: bool) -> dict[str, Any]:
        facts = activity.facts
        body: dict[str, Any] = {
            "Subject": activity.title,
            "Description": activity.notes,
            "CallType": CALL_TYPE.get(activity.direction, "Outbound"),
            "CallObject": self.call_object(activity),
            "Status": "Completed" if facts.ended else "In Progress",
        }
        if create:
            body["TaskSubtype"] = "Call"  # create-only: Salesforce refuses it in an update
        if activity.started_at:  # a date: the day the call started, in the org's time zone
            day = activity.started_at.astimezone(ZoneInfo(self.config.timezone)).date()
            body["ActivityDate"] = day.isoformat()
        if facts.ended:
            body["CallDurationInSeconds"] = round(activity.seconds or 0)
            body["CallDisposition"] = RESULT.get(activity.status, activity.status)
        if activity.person is not None:
            body["WhoId"] = activity.person.id
        if activity.owner:
            body["OwnerId"] = activity.owner
        return body

    async def find_activity(self, activity: crm.Activity, ctx: DeliveryContext) -> str | None:
        """The Task whose CallObject is this call (and whose Description has our marker: two
        PBXes may reuse a call id). SOQL reads the database: no search index lag."""
        soql = (
            "SELECT Id, Description FROM Task WHERE CallObject = "
            f"{soql_quote(self.call_object(activity))}"
        )
        for task in await self.query(ctx, soql, "task lookup"):
            if activity.marker in (task.get("Description") or ""):
                return str(task["Id"])
        return None

    async def create_activity(self, activity: crm.Activity, ctx: DeliveryContext) -> str:
        # No Task lookup first: the lifecycle's intent (relay.crm.lifecycle) already searches by
        # the marker (find_activity) when an earlier attempt may have created the Task, and a
        # lookup before every create was one SOQL query per logged call for nothing.
        response = await self.call_api(
            ctx,
            "POST",
            "/sobjects/Task",
            what="create task",
            json=self.fields(activity, create=True),
        )
        body = crm.json_object(response)
        if not body.get("success") or not body.get("id"):
            raise PermanentError(f"Salesforce create task: unexpected answer {body}")
        task_id = str(body["id"])
        ctx.log.info(
            "created Salesforce Task %s for Wildix call %s", task_id, activity.facts.call_id
        )
        return task_id

    async def update_activity(
        self, record_id: str, activity: crm.Activity, ctx: DeliveryContext
    ) -> None:
        await self.call_api(
            ctx,
            "PATCH",
            f"/sobjects/Task/{record_id}",
            what="update task",
            json=self.fields(activity, create=False),
        )


@hookimpl
def register_connectors(register: Any) -> None:
    register(SalesforceConnector)
