"""`relay worker` processes for the cluster tests: started, waited on until each one's claim loop
runs, and stopped with SIGTERM (each must exit cleanly)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

from tests.support.relay import start_worker
from tests.support.worker_log import WorkerLog


@contextlib.asynccontextmanager
async def dispatching_workers(config: Path, n: int) -> AsyncIterator[list[subprocess.Popen[bytes]]]:
    """``n`` workers on ``config``, each past the start of its claim loop (a worker logs
    "dispatcher started" as it begins; a busy machine can take many seconds to get there)."""
    workers = [start_worker(config) for _ in range(n)]
    try:
        for log in [WorkerLog(w) for w in workers]:
            await log.wait_for("dispatcher started")
        yield workers
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            assert w.wait(timeout=20) == 0
