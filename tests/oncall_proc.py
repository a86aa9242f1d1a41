"""`oncall` as the tests run it: a command to its end, or `oncall serve` in the background."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any


def oncall(*args: str, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess:
    """Runs ``oncall ARGS`` in a new process with this environment; output captured."""
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=os.environ.copy(),
        **kwargs,
    )


def start_serve(config: Path, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Starts ``oncall serve --config CONFIG``; its output is appended to ``log_path``."""
    with open(log_path, "a") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve", "--config", str(config)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM (a clean stop), then a kill after 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def full_pipe() -> tuple[int, int]:
    """A pipe (read end, write end) already full: a small one, filled, that nobody reads."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, 1031, 4096)  # F_SETPIPE_SZ
    os.set_blocking(write_end, False)
    try:
        while True:
            os.write(write_end, b"." * 512)
    except BlockingIOError:
        pass
    os.set_blocking(write_end, True)
    return read_end, write_end
