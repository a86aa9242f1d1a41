"""The terminal prompt is a verified channel: `y` at `oncall run`'s prompt is sealed as the
OS user behind the terminal, counted once, and the plan acts once."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

import pytest

from runbooks.engine import audit
from runbooks.engine.model import os_identity

pytestmark = pytest.mark.usefixtures("prefect_api")


def _read_until(fd: int, marker: str, timeout: float) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"never saw {marker!r}; the terminal showed:\n{seen[-3000:]}"
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            try:
                seen += os.read(fd, 65536).decode(errors="replace")
            except OSError:  # the process closed the terminal
                break
    return seen


@pytest.mark.timeout(150)
def test_yes_at_the_terminal_prompt_approves_as_the_os_user(pgdb, faults):
    idle = faults.idle_in_transaction(2)
    time.sleep(1.1)
    before = len(audit.read())
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "run",
            "db-connections",
            "--dsn",
            pgdb.dsn,
            "-p",
            f"database={pgdb.name}",
            "-p",
            "idle_in_transaction_seconds=1",
            "-p",
            "verify_timeout_seconds=3",
            "-p",
            "approval_timeout_seconds=60",
        ],  # fmt: skip
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "COLUMNS": "160", "TERM": "dumb"},
        close_fds=True,
    )
    os.close(slave)
    try:
        prompt = _read_until(master, "[y/N]", 90)
        assert pgdb.alive(idle) == set(idle)
        os.write(master, b"y\n")
        shown = _read_until(master, "fixed", 60)
        assert proc.wait(timeout=60) == 0, (prompt + shown)[-5000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert pgdb.alive(idle) == set()
    [entry] = audit.read()[before:]
    assert (entry["verdict"], entry["channel"]) == ("approved", "cli")
    assert entry["identity"] == f"os:{os_identity()}"
