"""docs/connectors.md stays true: its configuration examples load, its template example passes
the same check as check-config, and the messages it shows are what the defaults render."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from relay.plugins.email import default_templates
from relay.plugins.slack import default_template, payload

from relay import check_template, render, sample_events, template_values
from relay.config import parse_config
from tests.support.connectors import TYPES, build

DOC = Path(__file__).resolve().parents[1] / "docs" / "connectors.md"
EXAMPLE = re.compile(r"<!-- example: (\S+) -->\s*\n```\w*\n(.*?)\n```", re.S)
ENV = {
    "SLACK_BOT_TOKEN": "xoxb-1-2-doc",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/doc",
    "SMTP_PASSWORD": "doc-password",
    "WILDIX_SECRET_Q7M2XK": "doc-secret",
}


def examples() -> dict[str, str]:
    return dict(EXAMPLE.findall(DOC.read_text(encoding="utf-8")))


def sample_values(**extra: Any) -> dict[str, Any]:
    event = sample_events()["call_completed_missed_inbound"]
    integration = {"id": event.integration_id, "name": "ACME head office"}
    return template_values(event, integration=integration, **extra)


@pytest.mark.parametrize("name", ["slack-bot.yaml", "slack-webhook.yaml", "email.yaml"])
def test_configuration_examples_load(name: str) -> None:
    settings = parse_config(examples()[name], connector_types=TYPES, env=ENV)
    assert {c.type for c in settings.connectors.values()} <= {"slack", "email"}
    assert settings.integrations["q7m2xk"].routes


def test_template_examples_load_with_their_files(tmp_path: Path) -> None:
    docs = examples()
    presence = tmp_path / "presence.json.j2"
    presence.write_text(default_template("presence"))
    slack = yaml.safe_load(docs["templates.yaml"].replace("/etc/relay/templates", str(tmp_path)))
    build({"type": "slack", "webhook_url": ENV["SLACK_WEBHOOK_URL"], **slack})

    (tmp_path / "missed-subject.j2").write_text("Missed call from {{ caller | party }}")
    email = yaml.safe_load(
        docs["email-templates.yaml"].replace("/etc/relay/templates", str(tmp_path))
    )
    block = {"type": "email", "host": "mx", "from": "a@b.example", "to": ["c@d.example"]}
    build({**block, **email})


def test_the_block_kit_example_renders_a_valid_card() -> None:
    source = examples()["missed_call.json.j2"]
    check_template(source, ["missed_call"], check=payload)
    card = payload(render(source, **sample_values()))
    assert card["text"] == "Missed call from +33142685300"
    assert card["blocks"][0]["text"]["text"].startswith("*+33142685300* called Giulia Rossi")


def test_the_missed_call_card_shown_is_the_default_rendering() -> None:
    shown = json.loads(examples()["missed-call-card.json"])
    assert payload(render(default_template("missed_call"), **sample_values())) == shown


def test_the_missed_call_alert_shown_is_the_default_text() -> None:
    text = render(
        str(default_templates("missed_call")["text"]),
        **sample_values(connector="missed-call-mail", timezone="UTC"),
    )
    assert text.rstrip("\n") == examples()["missed-call-alert.txt"]
