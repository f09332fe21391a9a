"""The `relay` command as a user runs it: a real process per command, or in-process (a thread)
where many commands make one test."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from click.testing import CliRunner

from relay.cli import main

RELAY = [sys.executable, "-m", "relay"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args: str, config: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RELAY, "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


async def relay_cli(config: Path, *args: str) -> Ran:
    """Run a `relay` command in-process (a thread: each command runs its own event loop).

    Cheaper than a subprocess per call; tests/test_admin_cli.py runs the real console script too.
    """

    def invoke() -> Ran:
        result = CliRunner().invoke(main, ["--config", str(config), *args], catch_exceptions=False)
        return Ran(result.exit_code, result.stdout, result.stderr)

    return await asyncio.to_thread(invoke)
