"""Test support for the CRM connectors: each vendor's fake, config block and record reader,
so one scenario test can run against HubSpot and Pipedrive alike."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from tests.conftest import RunningRelay
from tests.crm_calls import Events
from tests.fakes.hubspot import FakeHubSpot
from tests.fakes.pipedrive import FakePipedrive
from tests.fakes.server import serve

UK_CONTACT = "+442071838750"  # the outbound fixture's callee
FR_CALLER = "+33142685300"  # the missed inbound fixture's caller
AGENT_EMAIL = "giulia.rossi@example.org"


@dataclass
class Vendor:
    name: str

    def fake(self, **options: Any) -> Any:
        return FakeHubSpot(**options) if self.name == "hubspot" else FakePipedrive(**options)

    def block(self, fake: Any, url: str, **extra: Any) -> dict[str, Any]:
        if self.name == "hubspot":
            base = {
                "type": "hubspot",
                "token": fake.token,
                "index_lag": 0,
                "rate_limit": {"requests": 50, "per": 1},
                "search_rate_limit": {"requests": 5, "per": 1},
            }
        else:
            base = {
                "type": "pipedrive",
                "api_token": fake.api_token,
                "rate_limit": {"requests": 50, "per": 2},
                "search_rate_limit": {"requests": 10, "per": 2},
            }
        return {**base, "base_url": url, "default_region": "GB", **extra}

    def seed(self, fake: Any) -> dict[str, str]:
        """The contacts and the agent every scenario expects, typed the way humans do."""
        if self.name == "hubspot":
            return {
                "uk": fake.add_contact("020 7183 8750", "Olivia", "Hart"),
                "fr": fake.add_contact("+33 1 42 68 53 00", "Luc", "Moreau"),
                "owner": fake.add_owner(AGENT_EMAIL, "Giulia"),
            }
        return {
            "uk": str(fake.add_person("Olivia Hart", "020 7183 8750")),
            "fr": str(fake.add_person("Luc Moreau", "+33 1 42 68 53 00")),
            "owner": str(fake.add_user(AGENT_EMAIL, "Giulia Rossi")),
        }

    def records(self, fake: Any, call_id: str) -> list[dict[str, Any]]:
        return fake.calls_for(call_id) if self.name == "hubspot" else fake.logs_for(call_id)

    def all_records(self, fake: Any) -> list[Any]:
        return list(fake.calls.values() if self.name == "hubspot" else fake.call_logs.values())

    def outcome(self, record: dict[str, Any]) -> str:
        if self.name == "hubspot":
            return record["properties"]["hs_call_status"]
        return record["outcome"]

    def person(self, record: dict[str, Any]) -> str | None:
        if self.name == "hubspot":
            return record["contacts"][0] if record["contacts"] else None
        return str(record["person_id"]) if record["person_id"] is not None else None

    def seconds(self, record: dict[str, Any]) -> float:
        if self.name == "hubspot":
            return int(record["properties"]["hs_call_duration"]) / 1000
        return int(record["duration"])


VENDORS = [Vendor("hubspot"), Vendor("pipedrive")]
EXPECTED = {  # normalized outcome → what each CRM shows
    "hubspot": {"completed": "COMPLETED", "missed": "NO_ANSWER"},
    "pipedrive": {"completed": "connected", "missed": "no_answer"},
}


@contextlib.asynccontextmanager
async def running(fake: Any) -> AsyncIterator[str]:
    async with serve(fake.app) as url:
        try:
            yield url
        finally:
            fake.faults.release.set()  # a scripted hang must not hold the shutdown


async def post_all(relay: RunningRelay, events: Events, integration: str) -> None:
    for _, body in events:
        response = await relay.post(body, integration=integration)
        assert response.status_code == 200, response.text


def duplicate(body: bytes) -> bytes:
    """The same event re-sent by Wildix with a new envelope time: new bytes, same content."""
    import msgspec

    data = msgspec.json.decode(body)
    data["time"] += 1
    return msgspec.json.encode(data)
