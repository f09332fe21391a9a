"""Serve an ASGI app (a fake vendor API, or relay itself) under uvicorn on 127.0.0.1:<free port>,
in the test's own event loop, so a test talks to it over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn


@contextlib.asynccontextmanager
async def serve(app: Any, **options: Any) -> AsyncIterator[str]:
    """Yields the base URL (``http://127.0.0.1:PORT``); stops the server on exit.

    ``options`` go to uvicorn.Config (fakes pass ``lifespan="off"``, a short graceful timeout).
    """
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False, **options)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("server did not start")
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
