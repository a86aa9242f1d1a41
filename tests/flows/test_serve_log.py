"""What `oncall serve` prints (ServeLog, with a frozen clock) and the relay that keeps a full
or closed stdout from ever blocking it (Outlet, in a child process writing into real pipes)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime

from flows.incident_model import TimelineEntry
from flows.intake import Submission
from flows.serve_log import ServeLog
from integrations.alerts import parse_alerts
from runbooks.engine.model import Approval
from tests.oncall_proc import full_pipe

NOON = datetime(2026, 12, 6, 12, 0, 5, tzinfo=UTC)


def _log() -> tuple[ServeLog, io.StringIO]:
    out = io.StringIO()
    return ServeLog(out, clock=lambda: NOON), out


def test_banner_names_the_receiver_the_ui_the_deployments_and_the_sweep():
    say, out = _log()
    say.banner(
        config_path="/etc/oncall.yaml",
        receiver_url="http://127.0.0.1:8787",
        ui_url="http://127.0.0.1:4200",
        deployments=["incident/incident", "health-sweep/health-sweep"],
        schedules=[
            'health-sweep/health-sweep on cron "* * * * *" (next 2026-12-06 12:01:00 UTC)',
            'drills/drills on cron "0 3 1 * *" (next 2027-01-01 03:00:00 UTC)',
        ],
        incidents="in this process (receiver.incidents: in-process)",
    )
    lines = out.getvalue().splitlines()
    assert lines[0] == "oncall serve: config /etc/oncall.yaml"
    assert lines[1].startswith("  receiver      http://127.0.0.1:8787  (POST /alerts/")
    assert lines[2] == "  Prefect UI    http://127.0.0.1:4200"
    assert lines[3] == "  deployments   2: incident/incident, health-sweep/health-sweep"
    assert lines[4] == (
        '  schedules     health-sweep/health-sweep on cron "* * * * *"'
        " (next 2026-12-06 12:01:00 UTC)"
    )
    assert lines[5] == (
        '                drills/drills on cron "0 3 1 * *" (next 2027-01-01 03:00:00 UTC)'
    )
    assert lines[-1].startswith("Ctrl-C or SIGTERM stops.")


def test_one_line_per_alert_incident_gate_decision_and_resolution():
    say, out = _log()
    [alert] = parse_alerts('{"service": "orders-db", "title": "Too many connections"}')
    say.alert(alert, Submission(action="opened", incident_run_id="run-1"))
    say.alert(alert, Submission(action="joined", incident_run_id="run-1"))
    say.alert(alert, Submission(action="ignored", reason="resolved alert with no open incident"))
    entry = TimelineEntry(at=NOON, kind="declared", text="declared INC-7 P1: connections 97%")
    say("timeline", {"incident_id": "INC-7", "entry": entry})
    say("timeline", {"incident_id": "INC-7", "entry": TimelineEntry(kind="finding", text="x")})
    say(
        "gate",
        {
            "runbook": "db-connections",
            "target": "orders-db",
            "summary": "Terminate 2 session(s)",
            "flow_run_id": "run-2",
            "timeout_at": "2026-12-06T12:15:05+00:00",
        },
    )
    approval = Approval(
        plan_id="p1", approved=True, approver="bob", channel="cli", identity="bob@host"
    )
    say("approval", {"approval": approval, "flow_run_id": "run-2"})
    done = TimelineEntry(kind="resolved", text="resolved by oncall: verified healthy for 60s")
    say("timeline", {"incident_id": "INC-7", "entry": done})
    say("finding", {"finding": object()})  # findings stay in the Prefect UI, not here
    assert out.getvalue().splitlines() == [
        "12:00:05 alert    orders-db 'Too many connections' (generic, firing) → opened an"
        " incident (flow run run-1)",
        "12:00:05 alert    orders-db 'Too many connections' (generic, firing) → joined the open"
        " incident (flow run run-1)",
        "12:00:05 alert    orders-db 'Too many connections' (generic, firing) → ignored:"
        " resolved alert with no open incident",
        "12:00:05 declared INC-7: declared INC-7 P1: connections 97%",
        "12:00:05 gate     db-connections on orders-db waits for approval: Terminate 2"
        " session(s) — oncall approve run-2 --as NAME, or the Prefect UI (times out 12:15 UTC)",
        "12:00:05 decision plan approved by bob via cli (identity bob@host)",
        "12:00:05 resolved INC-7: resolved by oncall: verified healthy for 60s",
    ]


_WRITER = textwrap.dedent(
    """
    import sys, time
    from flows.serve_log import Outlet
    outlet = Outlet.install()
    started = time.monotonic()
    for i in range(5000):  # ~400 KB: far more than any pipe holds
        print(f"line {i} " + "x" * 70, flush=True)
    sys.stderr.write(f"wrote in {time.monotonic() - started:.2f}s\\n")
    sys.stderr.flush()
    """
)


def _writer_into(read_end: int | None, write_end: int) -> subprocess.CompletedProcess:
    """Runs the writer with stdout and stderr both on ``write_end``; returns when it exits."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER], stdout=write_end, stderr=write_end, cwd=os.getcwd()
    )
    os.close(write_end)
    try:
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc


def test_a_full_pipe_never_blocks_the_writer():
    read_end, write_end = full_pipe()
    started = time.monotonic()
    proc = _writer_into(read_end, write_end)  # nobody reads read_end while it runs
    assert proc.returncode == 0
    assert time.monotonic() - started < 15
    os.set_blocking(read_end, False)
    with os.fdopen(read_end, "rb") as reader:
        kept = reader.read() or b""
    assert kept.startswith(b".")  # what was there first is still there, nothing interleaved


def test_a_closed_pipe_never_fails_the_writer():
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (tee, less …) is gone
    proc = _writer_into(None, write_end)
    assert proc.returncode == 0


def test_a_slow_reader_gets_every_line_in_order():
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER], stdout=write_end, stderr=subprocess.DEVNULL
    )
    os.close(write_end)
    received = b""
    with os.fdopen(read_end, "rb") as reader:
        while chunk := reader.read(8192):
            received += chunk
            time.sleep(0.001)
    proc.wait(timeout=20)
    lines = received.decode().splitlines()
    assert [line.split()[1] for line in lines] == [str(i) for i in range(5000)]
