"""The SQS source in tests: settings with one SQS integration per queue, and waiting on what the
consumer reports in /readyz."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml

from relay.config import Settings, parse_config
from relay.registry import connector_types
from tests.fakes.sqs import SECRET_KEY, Queue
from tests.support.relay import RunningRelay, config_dict
from tests.support.waiting import eventually


def sqs_settings(
    db_url: str,
    connectors: dict[str, Any],
    queues: dict[str, Queue],
    *,
    endpoint: str | None = None,
    extra: dict[str, Any] | None = None,
    **sqs: Any,
) -> Settings:
    """Settings with one ``transport: sqs`` integration per queue, through the YAML loader."""
    data = config_dict(db_url, connectors, extra=extra)
    routes = data["integrations"]["q7m2xk"]["routes"]
    data["integrations"] = {
        iid: {
            "name": f"SQS {iid}",
            "transport": "sqs",
            "sqs": q.config(endpoint, **sqs),
            "routes": routes,
        }
        for iid, q in queues.items()
    }
    return parse_config(yaml.safe_dump(data), connector_types=connector_types(), env={})


async def readyz(relay: RunningRelay) -> tuple[int, dict[str, Any]]:
    r = await relay.client.get(relay.url + "/readyz")
    assert SECRET_KEY not in r.text
    return r.status_code, r.json()


async def consumer(relay: RunningRelay, iid: str = "q7m2xk") -> dict[str, Any]:
    return (await readyz(relay))[1]["sqs"][iid]


async def consumer_when(
    relay: RunningRelay, test: Callable[[dict[str, Any]], bool], what: str, iid: str = "q7m2xk"
) -> dict[str, Any]:
    """The consumer's status once ``test`` holds: its counters move after SQS has answered, so
    an empty queue alone does not mean the consumer has counted the delete yet."""

    async def check() -> dict[str, Any] | None:
        status = await consumer(relay, iid)
        return status if test(status) else None

    return await relay.wait_until(check, what=what)


async def until(relay: RunningRelay, check: Any, what: str, timeout: float = 20.0) -> Any:
    """Wait for a plain (synchronous) check such as a queue count."""
    return await eventually(check, what, timeout)
