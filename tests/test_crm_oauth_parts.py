"""The Salesforce and Zoho connectors' parts on their own: config validation per OAuth flow,
`check` (what `relay check-config --online` runs) with good and bad credentials, SOSL escaping
against a fake that refuses unescaped queries, and secrets masked in check-config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from relay.plugins.salesforce import sosl_escape

from relay import PermanentError
from relay.config import ConfigError, parse_config
from relay.connector import ConnectorContext, Limiters
from relay.registry import connector_types
from relay.store.records import Store
from tests.fakes.salesforce import TEST_KEY_PEM as SALESFORCE_KEY_PEM
from tests.support.cli import run, write
from tests.support.crm import TOKEN_VENDORS, UK_CONTACT, Vendor, running


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
        with pytest.raises(PermanentError, match="refused to issue an access token") as info:
            await bad.check(ctx)
        if vendor.name == "salesforce":  # the people search, escaped, confirmed locally
            people = await connector(vendor.block(fake, url)).search_people(UK_CONTACT, ctx)
            assert [p.name for p in people] == ["Olivia Hart"]
    assert "wrong-secret" not in str(info.value)
    hint = "pre-authorized" if vendor.flow == "jwt_bearer" else "client_secret"
    if vendor.name == "zoho":
        hint = "Zoho API console"
    assert hint in str(info.value)
    assert [outcome for _, outcome in fake.tokens.requests][-1] != "ok"


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
