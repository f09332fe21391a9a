"""What a `relay worker` process writes to stderr, read as it comes: a test waits on the line that
says the worker reached a state (never on a fixed sleep), and the pipe never fills up and stalls
a worker that logs at DEBUG."""

from __future__ import annotations

import subprocess
import threading

from tests.support.waiting import eventually


class WorkerLog:
    """Drains ``process.stderr`` in a thread; ``lines`` so far, ``wait_for`` a line."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stderr is not None, "start the process with stderr=PIPE"
        self.process = process
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for raw in iter(self.process.stderr.readline, b""):
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def has(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    async def wait_for(self, text: str, timeout: float = 60.0) -> None:
        """Until a line containing ``text`` was written; fails early if the process exited."""

        def logged() -> bool:
            if self.has(text):
                return True
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the worker exited ({self.process.returncode}) before logging {text!r}:\n"
                    + "\n".join(self.lines[-20:])
                )
            return False

        await eventually(logged, f"the worker to log {text!r}", timeout)
