"""The messages an engineer reads at 3 a.m.: DSN errors, unreachable targets, what a dry run
spares and why, the approval prompt (in a real pty) and how it holds other output back."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import signal
import sys
import time

import pytest
from rich.console import Console

from flows.incident_model import TimelineEntry
from flows.live_view import LiveView
from tests.oncall_proc import oncall

SECRET = "hunter2-0b9e"


def _params(pgdb) -> list[str]:
    return ["-p", f"database={pgdb.name}", "-p", "idle_in_transaction_seconds=1"]


@pytest.mark.parametrize(
    ("dsn", "shown", "why"),
    [
        ("notadsn", "'notadsn'", 'missing "=" after "notadsn"'),
        (f"host=db.internal password={SECRET} extra", "'host=db.internal password=***'", "missing"),
        (
            f"postgres://app:{SECRET}@[::1/app",
            "'postgres://app:***@[::1/app'",
            'looking for matching "]"',
        ),
        (f"postgresql://app:{SECRET}@db/app?colour=blue", "@db/app?colour=blue'", '"colour"'),
    ],
)
def test_a_malformed_dsn_is_shown_with_only_its_password_masked(dsn, shown, why):
    result = oncall("run", "db-connections", "--dsn", dsn)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("oncall: error: --dsn: malformed DSN ")
    assert shown in line and why in line, line
    assert SECRET not in line and "extra" not in line  # a password may hold spaces


def test_an_unreachable_target_is_one_line_not_one_per_check(prefect_api):
    result = oncall("run", "db-connections", "--dsn", f"postgresql://app:{SECRET}@127.0.0.1:1/db")
    assert result.returncode == 3, result.stderr
    assert result.stdout.count("Connection refused") == 1, result.stdout
    assert re.search(r"not run\s+6 check\(s\): the target did not answer", result.stdout)
    assert SECRET not in result.stdout + result.stderr


def test_a_dry_run_shows_what_it_spares_and_why(pgdb, faults, prefect_api):
    [superuser] = faults.idle_in_transaction(1, superuser=True)
    time.sleep(1.1)
    result = oncall("run", "db-connections", "--dsn", pgdb.dsn, "--dry-run", *_params(pgdb))
    assert result.returncode == 1, result.stderr
    out = re.sub(r"\s*\n[│ ]*", " ", result.stdout)  # panel borders and wraps out of the way
    assert "Nothing to change." in out
    # The postgres role is a superuser with REPLICATION: the guard names the first it hits.
    assert re.search(rf"left alone: pid {superuser}: \w+ session: never touched", out), out


def _view(interactive: bool = True) -> tuple[LiveView, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200, highlight=False)
    return LiveView(console, interactive=interactive), out


def _wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_prompt_holds_other_output_until_it_is_answered(monkeypatch):
    read_end, write_end = os.pipe()
    monkeypatch.setattr(sys, "stdin", os.fdopen(read_end, "r"))
    answered: list[tuple[str, bool]] = []
    monkeypatch.setattr(
        "flows.live_view._answer",
        lambda view, gate, ok: answered.append((gate["flow_run_id"], ok)),
    )
    view, out = _view()
    gate = {
        "runbook": "db-connections",
        "summary": "Terminate 2 session(s)",
        "flow_run_id": "run-7",
        "timeout_at": "2026-12-06T12:15:05+00:00",
    }
    view("gate", gate)
    _wait_for(lambda: out.getvalue().endswith("? [y/N] "))
    assert "Approve db-connections: Terminate 2 session(s)? [y/N] " in out.getvalue()
    asked = out.getvalue()
    entry = TimelineEntry(kind="escalate", text="escalated to Incident Commander")
    view("timeline", {"incident_id": "INC-3", "entry": entry})
    time.sleep(0.3)
    assert out.getvalue() == asked  # nothing overwrote the question
    os.write(write_end, b"y\n")
    _wait_for(lambda: answered)
    assert answered == [("run-7", True)]
    assert out.getvalue().startswith(asked) and "escalated to Incident Commander" in out.getvalue()
    os.close(write_end)


def test_the_prompt_in_a_terminal_approves_and_the_run_remediates(pgdb, faults, prefect_api):
    [pid] = faults.idle_in_transaction(1)
    time.sleep(1.1)
    child_pid, fd = pty.fork()
    if child_pid == 0:  # the child: oncall in a real terminal
        os.execvpe(
            sys.executable,
            [
                sys.executable,
                "-m",
                "flows.cli",
                "run",
                "db-connections",
                "--dsn",
                pgdb.dsn,
                *_params(pgdb),
                "-p",
                "verify_timeout_seconds=5",
            ],
            os.environ.copy(),
        )
    seen = b""
    deadline = time.monotonic() + 120
    try:
        while b"[y/N] " not in seen and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                seen += os.read(fd, 65536)
        text = re.sub(rb"\x1b\[[0-9;?]*[a-zA-Z]", b"", seen).decode(errors="replace")
        assert re.search(
            r"Approve db-connections: Terminate 1 session\(s\) \(destructive\)\? \[y/N\] $", text
        ), text
        os.write(fd, b"y\n")
        while time.monotonic() < deadline:
            ready = select.select([fd], [], [], 0.5)[0]
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # the terminal closed: oncall ended
                    break
                if not chunk:
                    break
                seen += chunk
    finally:
        for _ in range(100):  # a few seconds to end by itself, then it is ended
            done, status = os.waitpid(child_pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.1)
        else:
            os.kill(child_pid, signal.SIGKILL)
            _, status = os.waitpid(child_pid, 0)
        os.close(fd)
    text = re.sub(rb"\x1b\[[0-9;?]*[a-zA-Z]", b"", seen).decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text[-3000:]
    assert "Plan approved by" in text and "fixed" in text
    assert pgdb.alive([pid]) == set()


def test_a_verification_is_one_line_with_the_time_left_then_its_last_round():
    from checks.findings import Finding, Status
    from runbooks.engine.model import RunbookReport

    now = [100.0]
    out = io.StringIO()
    view = LiveView(
        Console(file=out, force_terminal=False, width=200, highlight=False),
        interactive=False,
        verify_timeout_s=90,
        clock=lambda: now[0],
    )
    draining = Finding(check="depth", target="q", status=Status.CRITICAL, summary="4,000 ready")
    for _ in range(5):  # five polling rounds of the same verification
        view("verification", {"finding": draining, "runbook": "queue-backlog", "flow_run_id": "r"})
        now[0] += 10
    assert out.getvalue().splitlines() == [
        "waiting for queue-backlog to verify its fix — 1 min 30 s left"
    ]
    drained = Finding(check="depth", target="q", status=Status.OK, summary="0 ready")
    report = RunbookReport(runbook="queue-backlog", target="q", params={}, verification=[drained])
    view("report", {"report": report, "flow_run_id": "r"})
    assert out.getvalue().splitlines()[1:] == ["after: ✔ depth                    0 ready"]
    assert view._waits == {}


def test_the_live_line_in_a_terminal_counts_down_what_is_awaited():
    from datetime import UTC, datetime, timedelta

    now = [50.0]
    view, _ = _view(interactive=False)
    view.clock = lambda: now[0]
    view.console = Console(file=io.StringIO(), force_terminal=True, width=200)
    until = datetime.now(UTC) + timedelta(seconds=120)
    view("wait", {"key": "drain", "what": "emails to drain", "until": until})
    try:
        (wait,) = view._waits.values()
        now[0] += 30
        assert re.fullmatch(
            r"waiting for emails to drain — 1 min (29|30) s left", wait.sentence(now[0])
        )
        wait.latest = "depth: 1,200 ready"
        assert wait.sentence(now[0]).endswith("left — depth: 1,200 ready")
        assert view._live is not None  # animated in a terminal
    finally:
        view("wait", {"key": "drain", "done": True})
    assert view._live is None and view._waits == {}
