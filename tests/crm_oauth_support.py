"""Test support for the OAuth CRM connectors (Salesforce, Zoho): each vendor's fake, config
block, record reader and token controls, with the same interface as ``crm_support.Vendor`` so
one scenario test runs against both. The shared pieces (contacts, posting, fakes' servers) come
from ``crm_support``."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from relay.admin import actions
from relay.store.tables import links
from tests.conftest import RunningRelay
from tests.crm_support import AGENT_EMAIL
from tests.fakes.salesforce import TEST_KEY_PEM, FakeSalesforce
from tests.fakes.zoho import FakeZoho

FLOWS = ("client_credentials", "jwt_bearer", "refresh_token")


@cache
def key_file() -> str:
    """The test private key as an admin would keep it: a PEM file."""
    path = Path(tempfile.mkdtemp(prefix="relay_sf_")) / "salesforce.key"
    path.write_text(TEST_KEY_PEM)
    return str(path)


@dataclass
class OAuthVendor:
    name: str  # "salesforce" | "zoho"
    flow: str = "refresh_token"  # Salesforce: any of FLOWS; Zoho has only the refresh token flow

    @property
    def label(self) -> str:
        return self.name if self.name == "zoho" else f"salesforce-{self.flow}"

    def fake(self, **options: Any) -> Any:
        return FakeSalesforce(**options) if self.name == "salesforce" else FakeZoho(**options)

    def block(self, fake: Any, url: str, **extra: Any) -> dict[str, Any]:
        if self.name == "zoho":
            base = {
                "type": "zoho",
                "client_id": fake.client_id,
                "client_secret": fake.client_secret,
                "refresh_token": fake.refresh_token,
                "accounts_url": url,
                "index_lag": 0,
            }
        else:
            base = {"type": "salesforce", "client_id": fake.client_id, "login_url": url}
            if self.flow == "jwt_bearer":
                base |= {"username": fake.username, "private_key_file": key_file()}
            elif self.flow == "refresh_token":
                base |= {"client_secret": fake.client_secret, "refresh_token": fake.refresh_token}
            else:
                base["client_secret"] = fake.client_secret
        limits = {
            "rate_limit": {"requests": 50, "per": 1},
            "search_rate_limit": {"requests": 20, "per": 1},
        }
        return {**base, **limits, "default_region": "GB", **extra}

    def seed(self, fake: Any) -> dict[str, str]:
        """A contact typed nationally, a lead typed internationally, and the agent as a user."""
        return {
            "uk": fake.add_contact("020 7183 8750", "Olivia", "Hart"),
            "fr": fake.add_lead("+33 1 42 68 53 00", "Luc", "Moreau"),
            "owner": fake.add_user(AGENT_EMAIL, "Giulia Rossi"),
        }

    def records(self, fake: Any, call_id: str) -> list[dict[str, Any]]:
        return fake.tasks_for(call_id) if self.name == "salesforce" else fake.calls_for(call_id)

    def all_records(self, fake: Any) -> list[dict[str, Any]]:
        return list((fake.tasks if self.name == "salesforce" else fake.calls).values())

    def record_id(self, record: dict[str, Any]) -> str:
        return str(record["Id"] if self.name == "salesforce" else record["id"])

    def person(self, record: dict[str, Any]) -> str | None:
        if self.name == "salesforce":
            return record.get("WhoId")
        ref = record.get("Who_Id") or record.get("What_Id")
        return ref["id"] if ref else None

    def seconds(self, record: dict[str, Any]) -> int:
        if self.name == "salesforce":
            return int(record["CallDurationInSeconds"])
        minutes, seconds = record["Call_Duration"].split(":")
        return int(minutes) * 60 + int(seconds)

    def expire_tokens(self, fake: Any) -> None:
        fake.tokens.expire_all()

    def revoke(self, fake: Any) -> None:
        fake.tokens.revoke(fake.refresh_token)


SCENARIO_VENDORS = [OAuthVendor("salesforce", "client_credentials"), OAuthVendor("zoho")]
TOKEN_VENDORS = [*(OAuthVendor("salesforce", f) for f in FLOWS), OAuthVendor("zoho")]


async def link_ids(relay: RunningRelay, connector: str = "crm") -> dict[str, str]:
    """Wildix call id → the CRM record id relay keeps in its links."""
    rows = await relay.rows(links, links.c.connector == connector)
    return {row.key.split(":", 2)[2]: row.value["acts"]["call"].get("id") for row in rows}


async def retry_dead(relay: RunningRelay) -> int:
    """What an operator's Retry does (relay.admin.actions.retry) to every dead delivery."""
    dead = [d.id for d in await relay.deliveries() if d.state == "dead"]
    for delivery_id in dead:
        await actions.retry(relay.store, delivery_id)
    return len(dead)
