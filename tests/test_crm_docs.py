"""docs/crm.md stays true: its third-party CRM example loads as a plugin file, validates its
config, and logs a call through the shared layer against a real loopback server."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import yaml

from relay.config import parse_config
from relay.connector import DeliveryContext, Limiters
from relay.registry import connector_types
from relay.store.records import Store
from relay.wildix import parse
from tests.fakes.receiver import Receiver
from tests.support.calls import legacy
from tests.support.cli import run, write

DOC = Path(__file__).resolve().parents[1] / "docs" / "crm.md"


def example() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Writing a connector for another CRM", 1)[1]
    match = re.search(r"```python\n(.*?)\n```", section, re.S)
    assert match, "docs/crm.md lost its example connector"
    return match.group(1)


async def test_the_guide_example_logs_a_call(tmp_path: Path, store: Store) -> None:
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "acme_crm.py").write_text(example(), encoding="utf-8")
    types = connector_types([folder])
    assert "acmecrm" in types
    async with Receiver() as api, httpx.AsyncClient() as http:
        block = {
            "type": "acmecrm",
            "api_key": "k-1",
            "base_url": api.url,
            "default_region": "GB",
            "owner_lookup": False,
        }
        text = yaml.safe_dump({"connectors": {"acme": block}})
        inst = parse_config(text, connector_types=types, env={}).connectors["acme"]
        conn = inst.cls("acme", inst.options)
        json = {"content-type": "application/json"}
        api.respond(
            200,
            body='[{"id": "c1", "name": "Olivia", "phones": ["020 7183 8750"]}]',
            headers=json,
        )
        api.respond(200, body='{"id": "a1"}', headers=json)
        *_, (_, end) = legacy("doc_1", "+442071838750")
        ctx = DeliveryContext(
            name="acme",
            http=http,
            store=store,
            limiters=Limiters(),
            attempt=1,
            delivery_id=1,
            event_id=1,
            integration_id="h3p9ta",
            integration_name=None,
        )
        await conn.deliver(parse(end), ctx)
        search, create = api.requests
    assert search.headers["authorization"] == "Bearer k-1"
    assert search.query == "phone=%2B442071838750"
    body = create.json()
    assert body["contact"] == "c1" and body["status"] == "completed" and body["seconds"] == 0
    assert "Wildix call doc_1" in body["notes"]


def test_check_config_prints_crm_blocks_with_secrets_masked(tmp_path: Path) -> None:
    data = {
        "database": {"url": f"sqlite+aiosqlite:///{tmp_path}/r.db"},
        "connectors": {
            "crm": {
                "type": "hubspot",
                "token": "pat-na1-SECRET1",
                "match_cache_ttl": "5m",
                "rate_limit": {"requests": 190, "per": "10s"},
            },
            "pd": {"type": "pipedrive", "api_token": "SECRET2", "company_domain": "acme"},
            "fd": {
                "type": "freshdesk",
                "api_key": "SECRET3",
                "domain": "acme",
                "unlinked_requester": "calls@acme.example",
            },
        },
        "integrations": {"q7m2xk": {"secret": "s", "routes": [{"connector": "crm"}]}},
    }
    result = run("check-config", config=write(tmp_path / "relay.yaml", data))
    assert result.returncode == 0, result.stderr
    assert "crm (hubspot)" in result.stdout and "pd (pipedrive)" in result.stdout
    assert '"match_cache_ttl":300.0' in result.stdout
    assert '"rate_limit":{"requests":190,"per":10.0}' in result.stdout
    assert '"base_url":"https://acme.pipedrive.com"' in result.stdout
    assert "fd (freshdesk)" in result.stdout
    assert '"base_url":"https://acme.freshdesk.com"' in result.stdout
    assert "SECRET" not in result.stdout + result.stderr
