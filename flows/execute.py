"""Runs a runbook flow in this process: the terminal is a live view and an approval channel.

The terminal prompt is just one more channel: it answers the gate through Prefect's
resume API like ``oncall approve`` and the Prefect UI do, so whoever decides first
wins and the decision is recorded the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import select
import sys
import threading
import time
from typing import Any

from prefect import tags
from prefect.exceptions import NotPausedError
from prefect.flow_runs import resume_flow_run
from prefect.logging.handlers import PrefectConsoleHandler
from rich.console import Console
from rich.markup import escape

from flows.config import configured_policy
from flows.decisions import sealed_input
from flows.render import approval_line, finding_line, plan_panel, result_line
from runbooks.catalog import RunbookSpec
from runbooks.engine import live
from runbooks.engine.gate import set_policy_source
from runbooks.engine.guard import preapproval, seal_context, verified_os_identity
from runbooks.engine.model import RunbookReport, RunContext, os_identity

# approvals: from the oncall.yaml this process uses (--config, $ONCALL_CONFIG, ./)
set_policy_source(configured_policy)

__all__ = ["LiveView", "quiet_prefect_console", "run_runbook"]


def quiet_prefect_console() -> None:
    """Keeps Prefect's own INFO lines off the terminal; they still reach the Prefect API."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.setLevel(logging.WARNING)


def ui_url(flow_run_id: str) -> str:
    import os

    from flows.server import DEFAULT_API_URL

    api = os.environ.get("PREFECT_API_URL", DEFAULT_API_URL).rstrip("/")
    return f"{api.removesuffix('/api')}/runs/flow-run/{flow_run_id}"


class LiveView:
    """Shows findings, plans, decisions, results and incident timelines as they are published.

    Gates are asked about one at a time at the terminal (parallel runbooks can wait
    at the same moment); a gate decided elsewhere is dropped from the queue.
    """

    def __init__(self, console: Console, *, interactive: bool, show: bool = True) -> None:
        self.console = console
        self.interactive = interactive
        self.show = show
        self._gates: queue.Queue[dict[str, Any]] = queue.Queue()
        self._decided: set[str] = set()
        self._lock = threading.Lock()
        self._prompt: threading.Thread | None = None

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if kind in ("finding", "verification") and self.show:
            prefix = "after: " if kind == "verification" else ""
            self.console.print(finding_line(data["finding"], prefix))
        elif kind == "plan" and self.show and data["plan"].actions:
            self.console.print(plan_panel(data["plan"]))
        elif kind == "gate":
            with self._lock:
                self._decided.discard(data.get("flow_run_id") or "")
            self._on_gate(data)
        elif kind == "approval":
            with self._lock:
                self._decided.add(data.get("flow_run_id") or "")
            if self.show:
                self.console.print(approval_line(data["approval"]))
        elif kind == "result" and self.show:
            self.console.print(result_line(data["result"]))
        elif kind == "timeline" and self.show:
            entry = data["entry"]
            self.console.print(
                f"[dim]{entry.at:%H:%M:%S}[/dim] [bold]{data['incident_id']}[/bold] "
                f"{escape(entry.text)}"
            )

    def _on_gate(self, gate: dict[str, Any]) -> None:
        run_id = gate.get("flow_run_id")
        waiting = (
            f"Waiting for approval of {gate.get('runbook')} (timeout {gate['timeout_at'][11:19]}"
            f" UTC): [bold]oncall approve {run_id} --as NAME[/bold] [--reject], "
            f"or the Prefect UI {ui_url(run_id) if run_id else ''}"
        )
        if not self.interactive or run_id is None:
            Console(stderr=True).print(waiting)
            return
        self.console.print(waiting)
        self._gates.put(gate)
        if self._prompt is None or not self._prompt.is_alive():
            self._prompt = threading.Thread(target=self._ask_all, daemon=True)
            self._prompt.start()

    def _is_decided(self, run_id: str) -> bool:
        with self._lock:
            return run_id in self._decided

    def _ask_all(self) -> None:
        while True:
            try:
                gate = self._gates.get(timeout=1)
            except queue.Empty:
                return
            if not self._is_decided(gate["flow_run_id"]):
                self._ask(gate)

    def _ask(self, gate: dict[str, Any]) -> None:
        run_id = gate["flow_run_id"]
        self.console.print(
            f"[bold]Approve {gate.get('runbook')}: {escape(str(gate.get('summary')))}?[/bold]"
            " \\[y/N] ",
            end="",
        )
        line = None
        while not self._is_decided(run_id):
            ready, _, _ = select.select([sys.stdin], [], [], 0.3)
            if ready:
                line = sys.stdin.readline()
                break
        if line is None:
            self.console.print("\n(decided elsewhere)")
            return
        approved = line.strip().lower() in ("y", "yes")
        run_input = sealed_input(
            gate["record"],
            run_id=run_id,
            approved=approved,
            reason="approved at the terminal" if approved else "rejected at the terminal",
            approver=os_identity(),
            identity=verified_os_identity(),
            channel="cli",
        )
        deadline = time.monotonic() + 30
        while not self._is_decided(run_id):
            try:
                resume_flow_run(run_id, run_input=run_input)
                return
            except NotPausedError:
                if time.monotonic() > deadline:
                    self.console.print("[red]the run never reached its pause; not resumed[/red]")
                    return
                time.sleep(0.2)
            except Exception as exc:  # the flow keeps waiting; other channels still work
                self.console.print(f"[red]could not resume: {escape(str(exc))}[/red]")
                return


def run_runbook(
    spec: RunbookSpec,
    *,
    service: Any,
    params: Any,
    dry_run: bool = False,
    approve_as: str | None = None,
    context: Any = None,
    console: Console | None = None,
    interactive: bool = False,
    show: bool = True,
    extra_tags: tuple[str, ...] = (),
) -> RunbookReport:
    """Runs the runbook's flow here and returns its report."""
    from flows.server import wait_if_starting

    quiet_prefect_console()
    flow = spec.load()
    wait_if_starting()  # a server the CLI started without waiting (first use)
    view = LiveView(console or Console(), interactive=interactive, show=show)
    live.subscribe(view)
    if context is None:  # who started it: the OS user of this process, sealed for this run
        context = RunContext(requested_by=verified_os_identity())
    context = seal_context(context, runbook=spec.name, target=service.name)
    # --approve-as lives in this process (the one running the flow), never in a parameter.
    pre = preapproval(approve_as) if approve_as else contextlib.nullcontext()
    try:
        with tags("oncall", f"runbook:{spec.name}", *extra_tags), pre:
            return asyncio.run(
                flow(service=service, params=params, dry_run=dry_run, context=context)
            )
    finally:
        live.unsubscribe(view)
