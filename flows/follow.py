"""Following an incident that runs in another process: its timeline, its gates, its end.

``oncall incident declare`` without ``oncall serve`` starts the incident in a detached
process (``oncall incident declare … --json``, its output in a log under PREFECT_HOME)
and follows it from here through the Prefect API: the timeline as its events arrive,
each approval gate as a ``… ? [y/N]`` prompt, and the end. Ctrl-C only stops the
following: the incident goes on, and ``oncall incidents`` / ``pending`` / ``approve`` /
``resolve`` or the Prefect UI reach it. Nothing here imports Prefect.
"""

from __future__ import annotations

import select
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from flows.incident_model import fingerprint_tag, summary_from_run
from flows.prefect_api import PrefectAPI
from flows.server import prefect_home

__all__ = ["follow", "start_detached"]

_OPEN = ("RUNNING", "PAUSED", "PENDING", "SCHEDULED")


def start_detached(argv: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
    """Starts ``oncall ARGV --json`` in its own session, so a Ctrl-C here cannot reach it."""
    logs = prefect_home() / "oncall-incidents"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}.log"
    with open(log, "wb") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", *argv, "--json"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, log


def _find(api: PrefectAPI, fingerprints: list[str], since: str) -> list[dict[str, Any]]:
    runs = []
    for fingerprint in fingerprints:
        found = [
            r
            for r in api.incident_runs([fingerprint_tag(fingerprint)], limit=5)
            if (r.get("created") or "") >= since
        ]
        runs += found[:1]
    return runs


def _ask(console: Console, api: PrefectAPI, run: dict[str, Any], gate: dict[str, Any]) -> None:
    """One gate at the terminal; the loop (and so every other line) waits for the answer."""
    from runbooks.engine.model import os_identity

    question = Text(f"Approve {gate.get('runbook')}: {gate.get('summary')}? [y/N] ", style="bold")
    console.print(question, end="")
    answer = None
    while answer is None:
        if select.select([sys.stdin], [], [], 1.0)[0]:
            answer = sys.stdin.readline().strip().lower()
        elif (api.flow_run(run["id"]).get("state") or {}).get("type") != "PAUSED":
            console.print("\n(decided elsewhere)")
            return
    who = os_identity()
    approved = answer in ("y", "yes")
    result = api.resume(
        run["id"],
        {
            "approved": approved,
            "approver": who,
            "reason": "approved at the terminal" if approved else "rejected at the terminal",
            "channel": "cli",
            "identity": who,
        },
    )
    if result.get("status") != "ACCEPT":
        console.print(Text(f"Prefect refused the decision: {result}", style="red"))


def follow(
    api_url: str,
    fingerprints: list[str],
    proc: subprocess.Popen[bytes],
    log: Path,
    console: Console,
    *,
    interactive: bool,
    since: str,
) -> int:
    """Follows the incidents opened for ``fingerprints`` until they end; Ctrl-C detaches.

    Returns 0 when every incident resolved (or on a detach), 1 when one ended otherwise,
    and the child's own status when it failed before opening anything.
    """
    with PrefectAPI(api_url) as api:
        runs: list[dict[str, Any]] = []
        deadline = time.monotonic() + 120
        while not runs:
            runs = _find(api, fingerprints, since)
            if runs:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                console.print(Text(tail.strip() or "the incident process ended at once"))
                return proc.returncode if proc.returncode is not None else 1
            time.sleep(0.5)
        ids = [r["id"] for r in runs]
        seen: set[str] = set()
        asked: set[str] = set()
        announced = False
        try:
            while True:
                runs = [api.flow_run(i) for i in ids]
                names = [summary_from_run(r)["id"] for r in runs]
                if not announced and all(names):
                    console.print(
                        Text(
                            f"Following {', '.join(names)} here: the timeline as it happens, and"
                            " each approval to decide. Ctrl-C detaches; the incident goes on"
                            " (oncall incidents · pending · approve · resolve, or the Prefect UI).",
                            style="bold",
                        )
                    )
                    announced = True
                for event in api.events(ids, since, limit=50):  # the API's most
                    if event["id"] in seen or not event["event"].startswith("oncall.incident."):
                        continue
                    seen.add(event["id"])
                    since = max(since, event["occurred"])
                    _timeline_line(console, event)
                for name in filter(None, names):
                    for child in api.paused_children(name):
                        if child["id"] in asked:
                            continue
                        asked.add(child["id"])
                        gate = api.gate(child) or {"runbook": "?", "summary": child.get("name")}
                        if interactive:
                            _ask(console, api, child, gate)
                        else:
                            console.print(
                                f"{gate.get('runbook')} waits for approval: {gate.get('summary')}"
                                f" — oncall approve {child['id']} --as NAME"
                            )
                states = [(r.get("state") or {}).get("type") for r in runs]
                if all(state not in _OPEN for state in states):
                    return _ended(console, runs)
                time.sleep(1.0)
        except KeyboardInterrupt:
            console.print(
                f"\nDetached: {', '.join(filter(None, names)) or 'the incident'} goes on"
                f" (process {proc.pid}, log {log}). `oncall incidents` shows it;"
                " `oncall pending` and `oncall approve` decide its gates."
            )
            return 0


def _timeline_line(console: Console, event: dict[str, Any]) -> None:
    payload = event.get("payload") or {}
    resource = event.get("resource") or {}
    incident = str(resource.get("prefect.resource.id", "")).removeprefix("oncall.incident.")
    at = str(event.get("occurred", ""))[11:19]
    console.print(
        Text.assemble((f"{at} ", "dim"), (f"{incident} ", "bold"), str(payload.get("text", "")))
    )


def _ended(console: Console, runs: list[dict[str, Any]]) -> int:
    code = 0
    for run in runs:
        info = summary_from_run(run)
        console.print(f"{info['id']} ended: {info['status']}")
        if info["status"] != "resolved":
            code = 1
    return code
