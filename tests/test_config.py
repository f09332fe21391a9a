"""Config errors name the key path; secrets never print."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from relay.cli import main
from relay.config import ConfigError, load_config, parse_config
from relay.registry import connector_types

TYPES = connector_types()

GOOD = """
database: {url: "sqlite+aiosqlite:///./x.db"}
delivery: {schedule: [1s, 500ms, 2m], timeout: 10s}
connectors:
  out:
    type: webhook
    url: ${HOOK_URL}
    signing_secret: ${HOOK_SECRET:-whsec_c2VjcmV0LXNpZ25pbmcta2V5}
    delivery: {max_attempts: 3}
integrations:
  q7m2xk:
    name: Head office
    secret: ${WILDIX_SECRET}
    routes:
      - connector: out
        events: ["call:*"]
        where: {call.status: missed, call.direction: [inbound]}
"""
ENV = {"HOOK_URL": "https://example.org/hook?token=abc123", "WILDIX_SECRET": "s3cr3t-value"}


def parse(text: str, env: dict[str, str] | None = None):
    return parse_config(text, connector_types=TYPES, env=ENV if env is None else env)


def test_good_config_is_typed_with_defaults_and_overrides() -> None:
    s = parse(GOOD)
    assert s.delivery.schedule == [1.0, 0.5, 120.0]
    assert s.delivery.timeout == 10.0
    out = s.connectors["out"]
    assert out.type == "webhook" and out.options.url == ENV["HOOK_URL"]
    assert out.policy.max_attempts == 3 and out.policy.timeout == 10.0  # inherits the rest
    assert out.options.signing_secret == "whsec_c2VjcmV0LXNpZ25pbmcta2V5"  # the :- default
    assert s.integrations["q7m2xk"].secret == "s3cr3t-value"
    assert s.server.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("mutate", "path", "words"),
    [
        (
            lambda t: t.replace("    url: ${HOOK_URL}", "    url: ${HOOK_URL}\n    tokn: x"),
            "$.connectors.out.tokn",
            "unknown key",
        ),
        (
            lambda t: t.replace("delivery: {schedule", "delivery: {sched: 1, schedule"),
            "$.delivery.sched",
            "unknown key",
        ),
        (
            lambda t: t.replace("name: Head office", "name: Head office\n    secrt: x"),
            "$.integrations.q7m2xk.secrt",
            "unknown key",
        ),
        (
            lambda t: t.replace("type: webhook", "type: hubspotty"),
            "$.connectors.out.type",
            "unknown connector type 'hubspotty'",
        ),
        (
            lambda t: t.replace("- connector: out", "- connector: crm"),
            "$.integrations.q7m2xk.routes[0].connector",
            "no connector named 'crm'",
        ),
        (
            lambda t: t.replace("url: ${HOOK_URL}", "url: ftp://example.org"),
            "$.connectors.out",
            "http",
        ),
        (
            lambda t: t.replace("max_attempts: 3", "max_attempts: many"),
            "$.connectors.out.delivery.max_attempts",
            "Expected `int`",
        ),
        (
            lambda t: t.replace("timeout: 10s", "timeout: soon"),
            "$.delivery.timeout",
            "not a duration",
        ),
        (
            lambda t: t.replace("call.status: missed", "cal.status: missed"),
            "$.integrations.q7m2xk.routes[0].where.cal.status: unknown field 'cal'",
            "did you mean 'call'?",
        ),
        (
            lambda t: t.replace('events: ["call:*"]', 'events: ["call:*", "cal:end"]'),
            "$.integrations.q7m2xk.routes[0].events[1]: 'cal:end' matches no",
            "did you mean 'call:end'?",
        ),
    ],
)
def test_errors_name_the_key_path(mutate, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(mutate(GOOD))
    assert str(info.value).startswith(path), str(info.value)
    assert words.lower() in str(info.value).lower()


def test_missing_environment_variable_names_it_and_the_path() -> None:
    with pytest.raises(ConfigError) as info:
        parse(GOOD, env={"HOOK_URL": "https://x.org"})
    assert str(info.value) == (
        "$.integrations.q7m2xk.secret: environment variable WILDIX_SECRET is not set"
    )


def test_webhook_integration_needs_a_secret() -> None:
    with pytest.raises(ConfigError, match=r"^\$\.integrations\.q7m2xk\.secret"):
        parse(GOOD.replace("    secret: ${WILDIX_SECRET}\n", ""))


def test_shipped_config_loads_with_no_environment() -> None:
    s = load_config(Path(__file__).resolve().parents[1] / "config.yaml", env={})
    assert s.database.url.startswith("sqlite+aiosqlite:")
    assert s.server.host == "127.0.0.1"
    assert {c.type for c in s.connectors.values()} <= {"log", "file"}


def test_check_config_masks_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "relay.yaml"
    cfg.write_text(GOOD)
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    result = CliRunner().invoke(main, ["--config", str(cfg), "check-config"])
    assert result.exit_code == 0, result.output
    assert "out (webhook)" in result.output
    assert "q7m2xk Head office [webhook, secret set]" in result.output
    assert "→ out: call:*" in result.output
    for secret in ("s3cr3t-value", "abc123", "c2VjcmV0LXNpZ25pbmcta2V5"):
        assert secret not in result.output


def test_check_config_on_a_broken_file_exits_1_with_the_path(tmp_path: Path) -> None:
    cfg = tmp_path / "relay.yaml"
    cfg.write_text(GOOD.replace("type: webhook", "type: webhook\n    tokn: 1"))
    result = CliRunner().invoke(main, ["--config", str(cfg), "check-config"], env={**ENV})
    assert result.exit_code == 1
    assert "$.connectors.out.tokn: unknown key" in result.output
