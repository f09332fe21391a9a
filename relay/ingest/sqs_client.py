"""The SQS client side relay shares: a queue's region, an aiobotocore client for it, a signed
test message (``relay send-test --sqs``), and what an AWS or connection error says to an admin
(short, secret-free)."""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import (
    ClientError,
    ConnectionError,
    ConnectTimeoutError,
    NoCredentialsError,
    NoRegionError,
)

from relay.config import SqsConfig
from relay.wildix.signature import SQS_ATTRIBUTE, sign

_REGION = re.compile(
    r"(?:^|\.)sqs\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$|^([a-z0-9-]+)\.queue\.amazonaws\.com$"
)


def region_of(cfg: SqsConfig) -> str | None:
    """The configured region, else the one in an AWS queue URL, else the AWS chain's."""
    if cfg.region:
        return cfg.region
    m = _REGION.search(urlsplit(cfg.queue_url).hostname or "")
    return (m.group(1) or m.group(2)) if m else None


def create_client(cfg: SqsConfig, session: AioSession | None = None) -> Any:
    """An aiobotocore SQS client context manager; keys from the config or the AWS chain."""
    kwargs: dict[str, Any] = {
        "region_name": region_of(cfg),
        "endpoint_url": cfg.endpoint_url or None,
        "config": AioConfig(
            connect_timeout=5,
            read_timeout=cfg.wait_time + 15,
            retries={"max_attempts": 3, "mode": "standard"},
        ),
    }
    if cfg.access_key_id:
        kwargs["aws_access_key_id"] = cfg.access_key_id
        kwargs["aws_secret_access_key"] = cfg.secret_access_key
    return (session or get_session()).create_client("sqs", **kwargs)


async def send(cfg: SqsConfig, body: bytes) -> str:
    """Send ``body`` signed the way Wildix signs (``relay send-test --sqs``); the MessageId."""
    async with create_client(cfg) as client:
        response = await client.send_message(
            QueueUrl=cfg.queue_url,
            MessageBody=body.decode("utf-8"),
            MessageAttributes={
                SQS_ATTRIBUTE: {"DataType": "String", "StringValue": sign(body, cfg.verify_secret)}
            },
        )
    return str(response["MessageId"])


def describe(exc: BaseException, url: str | None = None) -> str:
    """A short, secret-free error for logs and ``/readyz`` (no SQL parameters, no keys).

    ``url``: the queue URL as configured, named in connection errors instead of the endpoint.
    """
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        text = f"{err.get('Code', 'error')}: {err.get('Message', '')}"
    elif isinstance(exc, NoRegionError):
        text = "no AWS region: set sqs.region (or AWS_DEFAULT_REGION)"
    elif isinstance(exc, NoCredentialsError):
        text = "no AWS credentials: set access_key_id/secret_access_key or the AWS environment"
    elif isinstance(exc, ConnectTimeoutError):
        text = f"connection to {url or exc.kwargs.get('endpoint_url')} timed out"
    elif isinstance(exc, ConnectionError):  # botocore's: aiohttp's text says "ssl:default"
        text = f"cannot connect to {url or exc.kwargs.get('endpoint_url')}: {_os_reason(exc)}"
    else:
        orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's error
        text = f"{type(exc).__name__}: {orig if orig is not None else exc}"
    return text[:300]


def _os_reason(exc: BaseException) -> str:
    """ "connection refused" rather than the HTTP client's wording, from the OSError beneath."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return os.strerror(seen.errno).lower()
        seen = getattr(seen, "os_error", None) or seen.__cause__ or seen.__context__
    return "connection failed"
