"""``relay send-test``: sign a built-in Wildix sample like the PBX does and send it to a relay."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import click
import httpx
import msgspec

from relay.cli.settings import fail, load_settings
from relay.config import SqsConfig
from relay.wildix import samples
from relay.wildix.signature import HEADER, sign


def fixture_names() -> list[str]:
    return sorted(
        p.name.removesuffix(".json") for p in samples().iterdir() if p.name.endswith(".json")
    )


def sample_body(integration_id: str, *, fixture: str, file: str | None, exact: bool) -> bytes:
    """A fixture (or file) addressed to this integration; re-stamped so it is a new event."""
    raw = Path(file).read_bytes() if file else (samples() / f"{fixture}.json").read_bytes()
    if exact:
        return raw
    body = msgspec.json.decode(raw)
    body["integrationId"] = integration_id
    body["time"] = int(time.time() * 1000)
    return msgspec.json.encode(body)


@click.command("send-test")
@click.argument("integration_id", required=False)
@click.option(
    "--fixture", default="call_completed", show_default=True, help="Built-in sample event."
)
@click.option(
    "--file", type=click.Path(exists=True, dir_okay=False), help="Send this body instead."
)
@click.option("--url", help="Webhook URL (default: this config's server).")
@click.option("--exact", is_flag=True, help="Send the bytes unchanged (no re-stamping).")
@click.option("--list", "list_", is_flag=True, help="List the built-in fixtures.")
@click.option("--sqs", is_flag=True, help="Send it to the integration's SQS queue instead.")
@click.pass_context
def send_test(
    ctx: click.Context,
    integration_id: str | None,
    fixture: str,
    file: str | None,
    url: str | None,
    exact: bool,
    list_: bool,
    sqs: bool,
) -> None:
    """Sign a sample event like Wildix does and POST it to a running relay (or queue it)."""
    if list_:
        click.echo("\n".join(fixture_names()))
        return
    if integration_id is None:
        raise click.UsageError("Missing argument 'INTEGRATION_ID' (only --list needs none).")
    settings = load_settings(ctx)
    integ = settings.integrations.get(integration_id)
    if integ is None:
        fail(f"no integration {integration_id!r} in {settings.source}")
    if not file and fixture not in fixture_names():
        fail(f"unknown fixture {fixture!r}; try --list")
    body = sample_body(integration_id, fixture=fixture, file=file, exact=exact)
    if sqs:
        _send_sqs(integration_id, integ.sqs, body)
        return
    if integ.transport == "sqs":
        fail(f"integration {integration_id} uses SQS: add --sqs")
    if not integ.secret:
        fail(f"integration {integration_id} has no webhook secret")
    if url is None:
        host = (
            settings.server.host if settings.server.host not in ("0.0.0.0", "::") else "127.0.0.1"
        )
        url = f"http://{host}:{settings.server.port}/webhooks/{integration_id}"
    headers = {HEADER: sign(body, integ.secret), "content-type": "application/json"}
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        fail(f"could not reach {url}: {exc}")
    click.echo(f"POST {url} → {response.status_code} {response.text}")
    if response.status_code != 200:
        sys.exit(1)


def _send_sqs(integration_id: str, cfg: SqsConfig | None, body: bytes) -> None:
    from relay.ingest.sqs_client import describe, send

    if cfg is None:
        fail(f"integration {integration_id} has no sqs block")
    try:
        message_id = asyncio.run(send(cfg, body))
    except UnicodeDecodeError:
        fail("an SQS message body must be UTF-8 text")
    except Exception as exc:
        fail(f"could not send to {cfg.queue_url}: {describe(exc)}")
    click.echo(f"SQS {cfg.queue_url} → MessageId {message_id}")


def register(cli: click.Group) -> None:
    cli.add_command(send_test)
