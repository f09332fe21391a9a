"""SQS for tests: moto's server mode on 127.0.0.1 speaks the real SQS wire API.

``MotoSqs`` runs the server; ``Queue`` plays Wildix (a plain boto3 client that signs like WMS);
``SqsProxy`` forwards to moto and can hold ``DeleteMessageBatch`` calls, which is how a test stages
"committed, not yet deleted" without touching relay's code.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import boto3
from aiohttp import web
from moto.server import ThreadedMotoServer

from relay.wildix.signature import SQS_ATTRIBUTE, sign

REGION = "eu-west-1"
KEY_ID = "AKIAQ7M2XKRELAYTEST1"
# What the admin typed into WMS; Wildix signs every message with it.
SECRET_KEY = "qL7c2VtZk9xW4rYb8NmP0sTa3uJd6Hf1Gi5Ke9Ro"

__all__ = ["KEY_ID", "REGION", "SECRET_KEY", "MotoSqs", "Queue", "SqsProxy"]


class MotoSqs:
    """One moto server for the test session; each test makes its own queues."""

    def __init__(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.client = boto3.client(
            "sqs",
            region_name=REGION,
            endpoint_url=self.endpoint,
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET_KEY,
        )

    def queue(self) -> Queue:
        url = self.client.create_queue(QueueName=f"wildix-{uuid.uuid4().hex[:10]}")["QueueUrl"]
        return Queue(self, url)

    def stop(self) -> None:
        self._server.stop()


class Queue:
    def __init__(self, moto: MotoSqs, url: str) -> None:
        self.moto = moto
        self.url = url

    def config(self, endpoint: str | None = None, **overrides: Any) -> dict[str, Any]:
        """The integration's ``sqs`` block, tuned for fast tests."""
        block: dict[str, Any] = {
            "queue_url": self.url,
            "region": REGION,
            "endpoint_url": endpoint or self.moto.endpoint,
            "access_key_id": KEY_ID,
            "secret_access_key": SECRET_KEY,
            "wait_time": 1,
            "visibility_timeout": 2,
        }
        return block | overrides

    def send(
        self, body: bytes, *, secret: str | None = SECRET_KEY, signature: str | None = None
    ) -> str:
        """Send like Wildix: the body as the message, its HMAC in the X-SIGNATURE attribute."""
        if signature is None and secret is not None:
            signature = sign(body, secret)
        attrs = (
            {SQS_ATTRIBUTE: {"DataType": "String", "StringValue": signature}} if signature else {}
        )
        response = self.moto.client.send_message(
            QueueUrl=self.url, MessageBody=body.decode("utf-8"), MessageAttributes=attrs
        )
        return str(response["MessageId"])

    def send_many(self, bodies: list[bytes]) -> list[str]:
        """Up to 10 signed messages in one SendMessageBatch: visible together."""
        entries = [
            {
                "Id": str(i),
                "MessageBody": body.decode("utf-8"),
                "MessageAttributes": {
                    SQS_ATTRIBUTE: {"DataType": "String", "StringValue": sign(body, SECRET_KEY)}
                },
            }
            for i, body in enumerate(bodies)
        ]
        response = self.moto.client.send_message_batch(QueueUrl=self.url, Entries=entries)
        assert not response.get("Failed"), response
        return [m["MessageId"] for m in sorted(response["Successful"], key=lambda m: int(m["Id"]))]

    def counts(self) -> tuple[int, int]:
        """(visible, in flight) as SQS reports them."""
        attrs = self.moto.client.get_queue_attributes(
            QueueUrl=self.url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return (
            int(attrs["ApproximateNumberOfMessages"]),
            int(attrs["ApproximateNumberOfMessagesNotVisible"]),
        )

    def is_empty(self) -> bool:
        return self.counts() == (0, 0)

    def take(self, wait: int = 0) -> list[dict[str, Any]]:
        """Receive (and so hide) what is visible now, with attributes, as another consumer would."""
        response = self.moto.client.receive_message(
            QueueUrl=self.url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=wait,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        messages: list[dict[str, Any]] = response.get("Messages", [])
        return messages


class SqsProxy:
    """A loopback HTTP proxy in front of moto; ``hold_deletes()`` parks DeleteMessageBatch."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.url = ""
        self.operations: list[str] = []
        self.held = 0
        self._holding = False
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    def hold_deletes(self) -> None:
        self._holding = True
        self._release.clear()

    def release_deletes(self) -> None:
        self._holding = False
        self._release.set()

    async def __aenter__(self) -> SqsProxy:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.Response:
        body = await request.read()
        target = request.headers.get("X-Amz-Target", "")
        operation = target.rpartition(".")[2] if target else _query_action(body)
        self.operations.append(operation)
        if operation == "DeleteMessageBatch" and self._holding:
            self.held += 1
            await self._release.wait()
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host",)}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, data=body, headers=headers
        ) as upstream:
            payload = await upstream.read()
            kept = {
                k: v
                for k, v in upstream.headers.items()
                if k.lower() in ("content-type", "x-amzn-requestid")
            }
            return web.Response(status=upstream.status, body=payload, headers=kept)


def _query_action(body: bytes) -> str:
    """The operation of a query-protocol request (older botocore); JSON ones name it in a header."""
    return parse_qs(body.decode("latin-1")).get("Action", [""])[0]
