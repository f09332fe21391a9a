"""A minimal HTTP sink (asyncio + httptools) that answers 200 to everything and counts.

Cheap on purpose: on a 2-core machine the sink must not be what limits the dispatcher.

    python -m bench.sink PORT
"""

from __future__ import annotations

import asyncio
import sys

import httptools

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"


class Sink(asyncio.Protocol):
    received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        Sink.received += 1
        self.transport.write(RESPONSE)  # type: ignore[attr-defined]


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Sink, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
