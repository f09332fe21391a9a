"""The `sqs` blocks: what an admin can write, what is refused and why, which process consumes."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from relay.cli import main
from relay.config import ConfigError, Settings, parse_config
from relay.ingest.sqs_client import region_of
from relay.ingest.sqs_consumer import consumes_here
from relay.registry import connector_types

QUEUE = "https://sqs.eu-west-1.amazonaws.com/123456789012/wildix"
AWS_SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY00"


def parse(sqs: str, *, transport: str = "sqs", top: str = "") -> Settings:
    text = f"""
{top}
connectors: {{out: {{type: log}}}}
integrations:
  h3p9ta:
    transport: {transport}
    sqs: {{queue_url: "{QUEUE}", {sqs}}}
    routes: [{{connector: out}}]
"""
    return parse_config(text, connector_types=connector_types(), env={})


def test_the_signing_secret_defaults_to_the_aws_secret_key_wildix_signs_with() -> None:
    cfg = (
        parse(f"access_key_id: AKIAEXAMPLE, secret_access_key: {AWS_SECRET}")
        .integrations["h3p9ta"]
        .sqs
    )
    assert cfg is not None
    assert cfg.verify_secret == AWS_SECRET
    assert (cfg.wait_time, cfg.max_messages, cfg.on_invalid) == (20, 10, "delete")
    assert region_of(cfg) == "eu-west-1"  # read from the queue URL
    own = parse(f"access_key_id: AKIAEXAMPLE, secret_access_key: {AWS_SECRET}, signing_secret: s1")
    assert own.integrations["h3p9ta"].sqs.verify_secret == "s1"  # type: ignore[union-attr]


def test_credentials_may_come_from_the_aws_chain_when_a_signing_secret_is_given() -> None:
    cfg = parse("signing_secret: s1, region: us-east-2").integrations["h3p9ta"].sqs
    assert cfg is not None and cfg.access_key_id is None and cfg.verify_secret == "s1"
    assert region_of(cfg) == "us-east-2"


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("region: eu-west-1", "nothing to verify X-SIGNATURE with"),
        ("access_key_id: AKIAEXAMPLE", "set both access_key_id and secret_access_key"),
        ("signing_secret: s, wait_time: 21", "wait_time must be 0..20"),
        ("signing_secret: s, max_messages: 11", "max_messages must be 1..10"),
        ("signing_secret: s, max_messages: 0", "max_messages must be 1..10"),
        ("signing_secret: s, visibility_timeout: 0", "visibility_timeout must be 1..43200"),
        ("signing_secret: s, on_invalid: drop", "Invalid enum value 'drop'"),
    ],
)
def test_bad_sqs_blocks_are_refused_with_their_path(block: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(block)
    assert err.value.path.startswith("$.integrations.h3p9ta.sqs")
    assert message in str(err.value)


def test_an_sqs_block_on_a_webhook_integration_is_a_forgotten_transport() -> None:
    with pytest.raises(ConfigError) as err:
        parse("signing_secret: s", transport="webhook")
    assert err.value.path == "$.integrations.h3p9ta.transport"
    assert "transport: sqs" in err.value.message


@pytest.mark.parametrize(
    ("consume_in", "serve", "worker"),
    [("serve", True, False), ("worker", False, True), ("both", True, True)],
)
def test_which_process_consumes(consume_in: str, serve: bool, worker: bool) -> None:
    settings = parse("signing_secret: s", top=f"sqs: {{consume_in: {consume_in}}}")
    assert consumes_here(settings, "serve", None) is serve
    assert consumes_here(settings, "worker", None) is worker
    # the command-line flag wins over the config, both ways
    assert consumes_here(settings, "serve", False) is False
    assert consumes_here(settings, "worker", True) is True


def test_check_config_shows_the_queue_and_never_the_keys(tmp_path: Path) -> None:
    config = tmp_path / "relay.yaml"
    config.write_text(
        f"""
connectors: {{out: {{type: log}}}}
integrations:
  h3p9ta:
    transport: sqs
    sqs: {{queue_url: "{QUEUE}", access_key_id: AKIAEXAMPLE, secret_access_key: {AWS_SECRET}}}
    routes: [{{connector: out}}]
"""
    )
    result = CliRunner().invoke(main, ["--config", str(config), "check-config"])
    assert result.exit_code == 0, result.output
    assert f"queue: {QUEUE} (credentials: keys in config; verified with secret_access_key)" in (
        result.output
    )
    assert AWS_SECRET not in result.output
