"""The ``slack`` connector's configuration and templates: what ``relay check-config`` reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from relay.plugins.slack import default_template, payload

from relay import MESSAGE_KINDS, render, sample_events, template_values
from tests.support.connectors import check_config, config_error

HOOK = {"type": "slack", "webhook_url": "https://hooks.slack.com/services/T0/B0/secret"}


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ('{"text": {{ call.id | tojson }', "templates.missed_call`: template error on line 1"),
        ('{"text": "{{ caller | nosuchfilter }}"}', "No filter named 'nosuchfilter'"),
        ('{"text": {{ call.id }}}', "does not render valid JSON"),
        ('{"text": "x", "blocks": {"type": "section"}}', "`blocks` must be a list"),
        ('{"text": {{ (1 / 0) | tojson }}}', "ZeroDivisionError"),
        ('{"text": "{{ \'\'.__class__.__mro__[1].__subclasses__() }}"}', "SecurityError"),
    ],
)
def test_a_broken_template_is_a_config_error_with_its_path(template: str, words: str) -> None:
    message = config_error({**HOOK, "templates": {"missed_call": template}}, "alerts")
    assert message.startswith("$.connectors.alerts: `templates.missed_call`: "), message
    assert words in message
    assert "secret" not in message


@pytest.mark.parametrize(
    ("block", "words"),
    [
        ({"type": "slack"}, "either `webhook_url`"),
        ({**HOOK, "token": "xoxb-1"}, "either `webhook_url`"),
        ({"type": "slack", "token": "xoxb-1"}, "needs a `channel`"),
        ({**HOOK, "channel": "#x"}, "`channel` is for bot mode"),
        ({"type": "slack", "token": "t", "channel": "#x", "post_on": ["call:*"]}, "`post_on`"),
        ({**HOOK, "webhook_url": "hooks.slack.com/services/x"}, "`webhook_url` must be"),
        ({**HOOK, "base_url": "ftp://x"}, "`base_url` must be"),
        ({**HOOK, "templates": {"voicemail": "{}"}}, "`templates.voicemail`: unknown"),
        ({**HOOK, "templates": {"sms_status": {"file": "/nonexistent.j2"}}}, "cannot read"),
    ],
)
def test_bad_slack_config_names_the_key(block: dict[str, Any], words: str) -> None:
    message = config_error(block, "alerts")
    assert message.startswith("$.connectors.alerts: "), message
    assert words in message


def test_check_config_reports_a_broken_template(tmp_path: Path) -> None:
    block = {**HOOK, "templates": {"call_summary": "{% if %}"}}
    result = check_config(tmp_path, {"alerts": block})
    assert result.exit_code == 1
    assert "$.connectors.alerts: `templates.call_summary`: template error on line 1" in (
        result.output
    )


def test_check_config_masks_the_token_and_the_webhook_url(tmp_path: Path) -> None:
    team = {"type": "slack", "token": "xoxb-77-s3cr3t", "channel": "#calls"}
    result = check_config(tmp_path, {"alerts": HOOK, "team": team})
    assert result.exit_code == 0, result.output
    assert "alerts (slack)" in result.output and "team (slack)" in result.output
    assert "s3cr3t" not in result.output and "/services/T0/B0/secret" not in result.output


def test_default_templates_render_every_sample_as_block_kit() -> None:
    """What check-config does for overrides, applied to the shipped defaults."""
    kinds = []
    for name, event in sample_events().items():
        values = template_values(event)
        if values["kind"] is None:
            continue
        message = payload(render(default_template(values["kind"]), **values))
        assert message["text"] and message["blocks"], name
        assert message["blocks"][-1]["type"] == "context", name
        kinds.append(values["kind"])
    assert set(kinds) == set(MESSAGE_KINDS)
