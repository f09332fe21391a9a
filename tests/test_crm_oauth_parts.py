"""The Salesforce and Zoho connectors' parts on their own: config validation per OAuth flow,
`check` (what `relay check-config --online` runs) with good and bad credentials, SOSL escaping
against a fake that refuses unescaped queries, and secrets masked in check-config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from relay.plugins.salesforce import sosl_escape

from relay import AuthError, PermanentError, RetryableError, crm
from relay.config import ConfigError, parse_config
from relay.connector import ConnectorContext, Limiters
from relay.crm.oauth import AUTH_REFUSED, OAuthConnector, Token
from relay.registry import connector_types
from relay.store.records import Store
from tests.fakes.receiver import Receiver
from tests.fakes.salesforce import TEST_KEY_PEM as SALESFORCE_KEY_PEM
from tests.support.cli import run, write
from tests.support.crm import DYNAMICS, TOKEN_VENDORS, UK_CONTACT, Vendor, running


def connector(block: dict[str, Any]) -> Any:
    text = yaml.safe_dump({"connectors": {"crm": block}})
    inst = parse_config(text, connector_types=connector_types(), env={}).connectors["crm"]
    return inst.cls("crm", inst.options)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"type": "salesforce", "client_id": "k"}, "set `client_secret`"),
        ({"type": "salesforce", "client_id": "k", "private_key": "x"}, "needs `username`"),
        (
            {"type": "salesforce", "client_id": "k", "username": "u", "private_key": "nope"},
            "not an unencrypted PEM",
        ),
        (
            {"type": "salesforce", "client_id": "k", "username": "u", "private_key_file": "/no"},
            "cannot read /no",
        ),
        (
            {"type": "salesforce", "client_id": "k", "client_secret": "s", "api_version": "67"},
            "v67.0",
        ),
        (
            {"type": "zoho", "client_id": "c", "client_secret": "s", "refresh_token": " "},
            "`refresh_token` is empty",
        ),
        (
            {
                "type": "zoho",
                "client_id": "c",
                "client_secret": "s",
                "refresh_token": "r",
                "accounts_url": "accounts.zoho.eu",
            },
            "https://accounts.zoho.eu",
        ),
    ],
)
def test_config_errors_say_what_to_set(block: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=r"^\$\.connectors\.crm") as info:
        connector(block)
    assert message in str(info.value)


def test_a_pem_key_from_the_environment_may_be_squeezed_onto_one_line() -> None:
    one_line = SALESFORCE_KEY_PEM.strip().replace("\n", "\\n")
    conn = connector(
        {"type": "salesforce", "client_id": "k", "username": "u", "private_key": one_line}
    )
    assert conn.config.flow == "jwt_bearer"


def test_sosl_escape_covers_every_reserved_character() -> None:
    assert sosl_escape("+44 (20) 7183-8750") == r"\+44 \(20\) 7183\-8750"
    assert sosl_escape(r"a&b|c!d{e}f[g]h^i\"j~k*l?m:n'o\p") == (
        r"a\&b\|c\!d\{e\}f\[g\]h\^i\\\"j\~k\*l\?m\:n\'o\\p"
    )


@pytest.mark.parametrize("vendor", TOKEN_VENDORS, ids=lambda v: v.label)
async def test_check_proves_the_credentials_and_explains_a_refusal(
    vendor: Vendor, store: Store
) -> None:
    fake = vendor.fake()
    vendor.seed(fake)
    wrong = {"client_secret": "wrong-secret"}
    if vendor.flow == "jwt_bearer":
        wrong = {"username": "someone-else@acme.example"}
    async with running(fake) as url, httpx.AsyncClient() as http:
        ctx = ConnectorContext(name="crm", http=http, store=store, limiters=Limiters())
        await connector(vendor.block(fake, url)).check(ctx)
        bad = connector(vendor.block(fake, url, **wrong))
        # the credentials themselves: an AuthError, which holds the connector behind its circuit
        with pytest.raises(AuthError, match="refused to issue an access token") as info:
            await bad.check(ctx)
        if vendor.name == "salesforce":  # the people search, escaped, confirmed locally
            people = await connector(vendor.block(fake, url)).search_people(UK_CONTACT, ctx)
            assert [p.name for p in people] == ["Olivia Hart"]
    assert "wrong-secret" not in str(info.value)
    assert "`relay reload`" in str(info.value) and "resume on their own" in str(info.value)
    assert "retry the dead" not in str(info.value)
    hint = "pre-authorized" if vendor.flow == "jwt_bearer" else "client_secret"
    if vendor.name == "zoho":
        hint = "Zoho API console"
    assert hint in str(info.value)
    assert [outcome for _, outcome in fake.tokens.requests][-1] != "ok"


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        ({"tenant_id": "00000000-0000-0000-0000-000000000000"}, "`tenant_id` must be"),
        ({"scope": "https://other.crm4.dynamics.com/.default"}, "`url` must be"),
    ],
)
async def test_a_token_request_entra_refuses_stays_permanent(
    wrong: dict[str, str], hint: str, store: Store
) -> None:
    """A wrong tenant or scope is the request's fault, not a refusal of the credentials: it
    stays permanent (dead, retried by hand once fixed), and never names the secret."""
    fake = DYNAMICS.fake()
    async with running(fake) as url, httpx.AsyncClient() as http:
        ctx = ConnectorContext(name="crm", http=http, store=store, limiters=Limiters())
        bad = connector(DYNAMICS.block(fake, url, **wrong))
        with pytest.raises(PermanentError, match="Entra ID refused") as info:
            await bad.check(ctx)
    assert not isinstance(info.value, AuthError)
    assert hint in str(info.value) and "retry the dead deliveries" in str(info.value)
    assert fake.client_secret not in str(info.value)


SALESFORCE_REFRESH = {
    "type": "salesforce",
    "client_id": "k",
    "client_secret": "SECRET-sf",
    "refresh_token": "SECRET-refresh",
}
ZOHO_BLOCK = {
    "type": "zoho",
    "client_id": "c",
    "client_secret": "SECRET-zoho",
    "refresh_token": "SECRET-refresh",
}
DYNAMICS_BLOCK = {
    "type": "dynamics",
    "url": "https://contoso.crm4.dynamics.com",
    "tenant_id": "t",
    "client_id": "c",
    "client_secret": "SECRET-entra",
}


@pytest.mark.parametrize(
    ("block", "error", "status", "kind"),
    [
        (SALESFORCE_REFRESH, "invalid_grant", 400, AuthError),
        (SALESFORCE_REFRESH, "invalid_client_id", 400, AuthError),
        (SALESFORCE_REFRESH, "inactive_user", 400, AuthError),
        (SALESFORCE_REFRESH, "invalid_request", 400, PermanentError),
        (SALESFORCE_REFRESH, "unsupported_grant_type", 400, PermanentError),
        (ZOHO_BLOCK, "invalid_code", 200, AuthError),
        (ZOHO_BLOCK, "invalid_client_secret", 200, AuthError),
        (ZOHO_BLOCK, "unsupported_grant_type", 200, PermanentError),
        (DYNAMICS_BLOCK, "invalid_client", 401, AuthError),
        (DYNAMICS_BLOCK, "unauthorized_client", 400, AuthError),
        (DYNAMICS_BLOCK, "invalid_scope", 400, PermanentError),
        (DYNAMICS_BLOCK, "invalid_request", 400, PermanentError),
    ],
)
def test_each_token_refusal_is_the_credentials_or_the_requests(
    block: dict[str, Any], error: str, status: int, kind: type[Exception]
) -> None:
    refused = connector(block).token_refused(error, "refused", status)
    assert type(refused) is kind
    assert "SECRET" not in str(refused)
    if kind is AuthError:
        assert "`relay circuit close crm`" in str(refused)


def test_zoho_rate_limiting_its_token_endpoint_stays_retryable() -> None:
    too_many = "You have made too many requests continuously. Please try again after some time."
    refused = connector(ZOHO_BLOCK).token_refused("Access Denied", too_many, 400)
    assert type(refused) is RetryableError and refused.retry_after == 60.0


class AcmeOAuth(OAuthConnector):
    """An OAuth CRM that keeps the default ``token_refused``."""

    type = "acmeoauth"
    vendor = "Acme CRM"

    async def fetch_token(self, ctx: ConnectorContext) -> Token:
        form = {"grant_type": "refresh_token", "refresh_token": "SECRET-refresh"}
        body = await self.request_token(ctx, f"{self.config.base_url}/token", form)
        return Token(str(body["access_token"]), str(self.config.base_url))


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (400, {"error": "invalid_grant", "error_description": "refresh token revoked"}, AuthError),
        (401, {"error": "invalid_client"}, AuthError),
        (401, {}, AuthError),  # the client was not recognised, whatever the body says
        (400, {"error": "invalid_scope"}, PermanentError),
        (400, {"error": "unsupported_grant_type"}, PermanentError),
        (429, {"error": "slow_down"}, RetryableError),
        (503, {}, RetryableError),
    ],
)
async def test_the_default_token_refusal_and_the_incident_key_it_leaves(
    status: int, body: dict[str, str], kind: type[Exception], store: Store
) -> None:
    """A refusal of the credentials (RFC 6749 ``invalid_grant``, ``invalid_client``) is an
    AuthError, of the request a PermanentError; both leave AUTH_REFUSED (the auth_revoked
    incident) until a token is issued. A busy token endpoint is retried and leaves nothing."""
    json_body = {"content-type": "application/json"}
    async with Receiver() as endpoint, httpx.AsyncClient() as http:
        conn = AcmeOAuth("crm", crm.CrmConfig(base_url=endpoint.url))
        ctx = ConnectorContext(name="crm", http=http, store=store, limiters=Limiters())
        endpoint.respond(status, body=json.dumps(body), headers=json_body)
        with pytest.raises(kind) as info:
            await conn.token(ctx)
        assert type(info.value) is kind
        refused = (await ctx.state.get()).get(AUTH_REFUSED)
        if kind is RetryableError:
            assert refused is None
        else:
            assert refused["reason"] == info.value.message
            assert "SECRET" not in refused["reason"]
            assert ("`relay circuit close crm`" in refused["reason"]) == (kind is AuthError)
        endpoint.respond(200, body='{"access_token": "a1"}', headers=json_body)
        assert (await conn.token(ctx)).access_token == "a1"
        assert AUTH_REFUSED not in await ctx.state.get()
    assert len(endpoint.requests) == 2  # one token request each: the refusal, then the token


async def test_salesforce_fake_refuses_unescaped_sosl(store: Store) -> None:
    vendor = TOKEN_VENDORS[0]
    fake = vendor.fake()
    async with running(fake) as url, httpx.AsyncClient() as http:
        ctx = ConnectorContext(name="crm", http=http, store=store, limiters=Limiters())
        conn = connector(vendor.block(fake, url))
        raw = f"FIND {{{UK_CONTACT}}} IN PHONE FIELDS RETURNING Contact(Id)"
        with pytest.raises(PermanentError, match="MALFORMED_SEARCH"):
            await conn.call_api(ctx, "GET", "/search/", what="search", params={"q": raw})


def test_check_config_masks_oauth_secrets(tmp_path: Path) -> None:
    data = {
        "database": {"url": f"sqlite+aiosqlite:///{tmp_path}/r.db"},
        "connectors": {
            "sf": {
                "type": "salesforce",
                "client_id": "3MVG9-consumer",
                "username": "api@acme.example",
                "private_key": SALESFORCE_KEY_PEM,
            },
            "zoho": {
                "type": "zoho",
                "client_id": "1000.CLIENT",
                "client_secret": "SECRET-zoho",
                "refresh_token": "1000.SECRET-refresh",
                "accounts_url": "https://accounts.zoho.eu",
            },
        },
        "integrations": {"q7m2xk": {"secret": "s", "routes": [{"connector": "sf"}]}},
    }
    result = run("check-config", config=write(tmp_path / "relay.yaml", data))
    assert result.returncode == 0, result.stderr
    assert "sf (salesforce)" in result.stdout and "zoho (zoho)" in result.stdout
    assert '"api_version":"v67.0"' in result.stdout and '"limit_pause":1800.0' in result.stdout
    output = result.stdout + result.stderr
    assert "SECRET" not in output and "PRIVATE KEY" not in output
