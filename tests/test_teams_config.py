"""The ``teams`` connector's configuration and templates: what ``relay check-config`` reports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from relay.plugins.teams import card, default_template, envelope

from relay import MESSAGE_KINDS, render, sample_events, template_values
from relay.config import parse_config
from tests.fakes.teams import is_message
from tests.support.connectors import TYPES, check_config, config_error

URL = (
    "https://prod-07.westeurope.logic.azure.com:443/workflows/4f1c/triggers/manual/paths/invoke"
    "?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=Zx9s3cr3tSigValue"
)
HOOK = {"type": "teams", "webhook_url": URL}
DOC = Path(__file__).resolve().parents[1] / "docs" / "connectors.md"
EXAMPLE = re.compile(r"<!-- example: (\S+) -->\s*\n```\w*\n(.*?)\n```", re.S)
CARD = '{"type": "AdaptiveCard", "version": "1.4", "body": [%s]}'


@pytest.mark.parametrize(
    ("template", "words"),
    [
        (CARD % '{"type": "TextBlock", "text": {{ call.id | tojson }', "template error on line 1"),
        (CARD % '{"type": "TextBlock", "text": "{{ caller | nosuchfilter }}"}', "No filter named"),
        (CARD % '{"type": "TextBlock", "text": {{ call.id }}}', "does not render valid JSON"),
        ('{"type": "message", "attachments": []}', '"type": "AdaptiveCard"'),
        (
            '{"type": "AdaptiveCard", "version": "2.0", "body": [{"type": "TextBlock"}]}',
            "`version`",
        ),
        ('{"type": "AdaptiveCard", "version": 1.4, "body": [{"type": "TextBlock"}]}', "`version`"),
        ('{"type": "AdaptiveCard", "version": "1.4", "body": []}', "`body` must be a non-empty"),
        (CARD % '{"text": "no type"}', "must be an object with a `type`"),
        (
            CARD % '{"type": "TextBlock", "text": {{ ("x" * 30000) | tojson }}}',
            "Teams takes at most",
        ),
        (CARD % '{"type": "TextBlock", "text": {{ (1 / 0) | tojson }}}', "ZeroDivisionError"),
        (
            CARD
            % '{"type": "TextBlock", "text": "{{ \'\'.__class__.__mro__[1].__subclasses__() }}"}',
            "SecurityError",
        ),
    ],
)
def test_a_broken_template_is_a_config_error_with_its_path(template: str, words: str) -> None:
    message = config_error({**HOOK, "templates": {"missed_call": template}}, "alerts")
    assert message.startswith("$.connectors.alerts: `templates.missed_call`: "), message
    assert words in message
    assert "s3cr3t" not in message


@pytest.mark.parametrize(
    ("block", "words"),
    [
        ({"type": "teams"}, "webhook_url"),
        (
            {**HOOK, "webhook_url": "prod-07.westeurope.logic.azure.com/workflows"},
            "`webhook_url` must",
        ),
        ({**HOOK, "webhook_url": "http://prod-07.westeurope.logic.azure.com/x"}, "https://"),
        ({**HOOK, "webhook_url": "ftp://localhost/x"}, "`webhook_url` must be an https://"),
        ({**HOOK, "post_on": []}, "`post_on` must list"),
        ({**HOOK, "timeout": 0}, "`timeout` must be"),
        ({**HOOK, "channel": "#x"}, "channel"),
        ({**HOOK, "templates": {"voicemail": "{}"}}, "`templates.voicemail`: unknown"),
        ({**HOOK, "templates": {"sms_status": {"file": "/nonexistent.j2"}}}, "cannot read"),
    ],
)
def test_bad_teams_config_names_the_key(block: dict[str, Any], words: str) -> None:
    message = config_error(block, "alerts")
    assert message.startswith("$.connectors.alerts"), message
    assert words in message
    assert "s3cr3t" not in message


def test_check_config_reports_a_broken_template(tmp_path: Path) -> None:
    block = {**HOOK, "templates": {"call_summary": "{% if %}"}}
    result = check_config(tmp_path, {"alerts": block})
    assert result.exit_code == 1
    assert "$.connectors.alerts: `templates.call_summary`: template error on line 1" in (
        result.output
    )
    assert "s3cr3t" not in result.output


def test_check_config_masks_the_webhook_url(tmp_path: Path) -> None:
    result = check_config(tmp_path, {"alerts": HOOK})
    assert result.exit_code == 0, result.output
    assert "alerts (teams)" in result.output
    assert "Zx9s3cr3tSigValue" not in result.output and "sig=" not in result.output
    assert "/workflows/4f1c" not in result.output


def test_default_templates_render_every_sample_as_a_valid_card() -> None:
    """What check-config does for overrides, applied to the shipped defaults, and the schema
    check the fake Workflows trigger applies."""
    kinds = []
    for name, event in sample_events().items():
        values = template_values(event)
        if values["kind"] is None:
            continue
        rendered = card(render(default_template(values["kind"]), **values))
        assert is_message(envelope(rendered)), name
        assert rendered["body"][-1]["isSubtle"] is True, name
        kinds.append(values["kind"])
    assert set(kinds) == set(MESSAGE_KINDS)


def test_the_documented_teams_examples_load_and_match_the_defaults() -> None:
    """docs/connectors.md stays true: its config loads and the card it shows is the default."""
    docs = dict(EXAMPLE.findall(DOC.read_text(encoding="utf-8")))
    env = {"TEAMS_WEBHOOK_URL": URL, "WILDIX_SECRET_Q7M2XK": "doc-secret"}
    settings = parse_config(docs["teams.yaml"], connector_types=TYPES, env=env)
    assert settings.connectors["teams-calls"].type == "teams"
    event = sample_events()["call_completed_missed_inbound"]
    integration = {"id": event.integration_id, "name": "ACME head office"}
    values = template_values(event, integration=integration)
    shown = card(render(default_template("missed_call"), **values))
    assert shown == json.loads(docs["teams-missed-call-card.json"])
