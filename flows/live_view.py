"""The terminal's live view of runbooks and incidents, and its approval prompt.

What the runbook flow publishes (``runbooks.engine.live``) becomes lines here:
findings as they arrive, the plan with what it spares and why, decisions, results and
incident timelines. Three things keep it readable at 3 a.m.:

- an unreachable target is one line, not one per check that could not run;
- a long wait (a runbook verifying its fix, a queue draining, an incident's recovery
  window) is one live line saying what is awaited and the time left, instead of a
  line per polling round; the final round's findings are printed when it ends;
- while the prompt ``Approve …? [y/N]`` waits, everything else is held back and
  printed once it is answered, so nothing overwrites the question.

Gates are asked about one at a time (parallel runbooks can wait at the same moment);
a gate decided elsewhere is dropped from the queue. The answer goes through Prefect's
resume API like ``oncall approve`` and the UI, so whoever decides first wins.
"""

from __future__ import annotations

import queue
import select
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from flows.render import approval_line, finding_line, plan_panel, result_line

__all__ = ["LiveView", "Wait", "ui_url"]


class Wait:
    """Something the view is waiting on: what, since when, until when (if known)."""

    def __init__(self, what: str, started: float, until: float | None) -> None:
        self.what, self.started, self.until = what, started, until
        self.latest = ""

    def sentence(self, now: float) -> str:
        if self.until is not None:
            timing = f"{_duration(max(0.0, self.until - now))} left"
        else:
            timing = f"{_duration(now - self.started)} so far"
        return f"waiting for {self.what} — {timing}" + (f" — {self.latest}" if self.latest else "")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class LiveView:
    """A live-bus listener printing to ``console``; ``close()`` when the run is over.

    ``verify_timeout_s`` (the runbook's own parameter, when known) and
    ``recovery_window_s`` / ``recovery_timeout_s`` (oncall.yaml's ``verification:``)
    turn waits into "time left"; without them the view says how long it has waited.
    """

    def __init__(
        self,
        console: Console,
        *,
        interactive: bool,
        show: bool = True,
        verify_timeout_s: float | None = None,
        recovery_window_s: float | None = None,
        recovery_timeout_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console
        self.interactive = interactive
        self.show = show
        self.verify_timeout_s = verify_timeout_s
        self.recovery_window_s = recovery_window_s
        self.recovery_timeout_s = recovery_timeout_s
        self.clock = clock
        self._gates: queue.Queue[dict[str, Any]] = queue.Queue()
        self._decided: set[str] = set()
        self._lock = threading.Lock()
        self._out = threading.RLock()  # printing, holding and the live line
        self._held: list[RenderableType] | None = None
        self._causes: set[str] = set()
        self._waits: dict[str, Wait] = {}
        self._live: Live | None = None
        self._prompt: threading.Thread | None = None

    # -- output ------------------------------------------------------------------------

    def _print(self, renderable: RenderableType) -> None:
        with self._out:
            if self._held is not None:
                self._held.append(renderable)
            else:
                self.console.print(renderable)

    def _waiting_line(self) -> RenderableType:
        now = self.clock()
        spinners = [
            Spinner("dots", text=Text(w.sentence(now), style="cyan")) for w in self._waits.values()
        ]
        return Group(*spinners)

    def _sync_live(self) -> None:
        """Shows the live line while something is awaited and no prompt is open."""
        with self._out:
            wanted = bool(self._waits) and self._held is None and self.console.is_terminal
            if wanted and self._live is None:
                self._live = Live(
                    get_renderable=self._waiting_line,
                    console=self.console,
                    refresh_per_second=2,
                    transient=True,
                )
                self._live.start()
            elif not wanted and self._live is not None:
                self._live.stop()
                self._live = None

    def _start_wait(self, key: str, what: str, seconds: float | None) -> None:
        now = self.clock()
        with self._out:
            if key in self._waits:
                return
            wait = Wait(what, now, now + seconds if seconds is not None else None)
            self._waits[key] = wait
            if not self.console.is_terminal:  # a log gets one line, not an animation
                self._print(Text(wait.sentence(now), style="cyan"))
        self._sync_live()

    def _end_wait(self, key: str) -> None:
        with self._out:
            self._waits.pop(key, None)
        self._sync_live()

    def close(self) -> None:
        """Stops the live line (a run that ended without a report leaves none behind)."""
        with self._out:
            self._waits.clear()
        self._sync_live()

    # -- events ------------------------------------------------------------------------

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "gate":
            with self._lock:
                self._decided.discard(data.get("flow_run_id") or "")
            self._on_gate(data)
        elif kind == "approval":
            with self._lock:
                self._decided.add(data.get("flow_run_id") or "")
            if self.show:
                self._print(approval_line(data["approval"]))
        elif self.show:
            self._show(kind, data)

    def _show(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "finding":
            self._finding(data["finding"])
        elif kind == "verification":
            self._verifying(data)
        elif kind == "plan" and (data["plan"].actions or data["plan"].spared):
            self._print(plan_panel(data["plan"]))
        elif kind == "result":
            self._print(result_line(data["result"]))
        elif kind == "report":
            report = data["report"]
            self._end_wait(f"verify {data.get('flow_run_id')}")
            self._end_wait(f"wait verify {data.get('flow_run_id')}")
            for finding in report.verification:
                self._finding(finding, "after: ")
        elif kind == "wait":
            self._wait_event(data)
        elif kind == "timeline":
            self._timeline(data)

    def _finding(self, finding: Any, prefix: str = "") -> None:
        if finding.unreachable:  # one line per unreachable target, not one per check
            cause = prefix + (finding.summary.partition(" could not run: ")[2] or finding.summary)
            with self._out:
                if cause in self._causes:
                    return
                self._causes.add(cause)
        self._print(finding_line(finding, prefix))

    def _verifying(self, data: dict[str, Any]) -> None:
        """A round of a runbook's verification: one live line, not a line per round."""
        key = f"wait verify {data.get('flow_run_id')}"  # the kernel's own wait line
        if key not in self._waits:
            key = f"verify {data.get('flow_run_id')}"
            self._start_wait(key, f"{data.get('runbook')} to verify its fix", self.verify_timeout_s)
        finding = data["finding"]
        with self._out:
            if key in self._waits and finding.status.is_problem:
                self._waits[key].latest = f"{finding.check}: {finding.summary}"

    def _wait_event(self, data: dict[str, Any]) -> None:
        """``wait`` events: ``{"key", "what", "until" (datetime, optional), "done"}``."""
        key = f"wait {data.get('key') or data.get('flow_run_id')}"
        if data.get("done"):
            self._end_wait(key)
            return
        until = data.get("until")
        seconds = (
            (until - datetime.now(until.tzinfo)).total_seconds()
            if isinstance(until, datetime)
            else None
        )
        self._start_wait(key, str(data.get("what") or "something"), seconds)

    def _timeline(self, data: dict[str, Any]) -> None:
        entry, incident = data["entry"], data["incident_id"]
        self._print(
            Text.assemble((f"{entry.at:%H:%M:%S} ", "dim"), (f"{incident} ", "bold"), entry.text)
        )
        key = f"recovery {incident}"
        if entry.kind == "status" and entry.text.startswith("status monitoring"):
            self._start_wait(key, f"{incident}'s checks to be healthy", self.recovery_timeout_s)
        elif entry.kind == "verify":
            self._end_wait(key)
            what = f"{incident} to stay healthy before it resolves"
            self._start_wait(key + " window", what, self.recovery_window_s)
        elif entry.kind in ("resolved", "status"):
            self._end_wait(key)
            self._end_wait(key + " window")

    # -- the approval prompt -------------------------------------------------------------

    def _on_gate(self, gate: dict[str, Any]) -> None:

        run_id = gate.get("flow_run_id")
        waiting = Text(
            f"Waiting for approval of {gate.get('runbook')} (timeout {gate['timeout_at'][11:19]}"
            f" UTC): oncall approve {run_id} --as NAME [--reject], or the Prefect UI "
            f"{ui_url(run_id) if run_id else ''}"
        )
        if not self.interactive or run_id is None:
            Console(stderr=True).print(waiting)
            return
        self._print(waiting)
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
        question = Text(
            f"Approve {gate.get('runbook')}: {gate.get('summary')}? [y/N] ", style="bold"
        )
        with self._out:  # from here until answered, other output waits its turn
            self._held = []
        self._sync_live()
        with self._out:
            self.console.print(question, end="")
        line = None
        try:
            while not self._is_decided(run_id):
                ready, _, _ = select.select([sys.stdin], [], [], 0.3)
                if ready:
                    line = sys.stdin.readline()
                    break
            if line is None:
                self.console.print("\n(decided elsewhere)")
        finally:
            with self._out:
                held, self._held = self._held or [], None
                for renderable in held:
                    self.console.print(renderable)
            self._sync_live()
        if line is not None:
            _answer(self, gate, line.strip().lower() in ("y", "yes"))


def _answer(view: LiveView, gate: dict[str, Any], approved: bool) -> None:
    """Resumes the paused run with the terminal's decision (the gate may not be paused yet),
    sealed as the OS user behind this terminal for this gate (docs/security.md)."""
    from prefect.exceptions import NotPausedError
    from prefect.flow_runs import resume_flow_run

    from flows.decisions import sealed_input
    from runbooks.engine.guard import verified_os_identity
    from runbooks.engine.model import os_identity

    run_id = gate["flow_run_id"]
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
    while not view._is_decided(run_id):
        try:
            resume_flow_run(UUID(run_id), run_input=run_input)
            return
        except NotPausedError:
            if time.monotonic() > deadline:
                view._print(Text("the run never reached its pause; not resumed", style="red"))
                return
            time.sleep(0.2)
        except Exception as exc:  # the flow keeps waiting; other channels still work
            view._print(Text(f"could not resume: {exc}", style="red"))
            return


def ui_url(flow_run_id: str) -> str:
    import os

    from flows.server import DEFAULT_API_URL

    api = os.environ.get("PREFECT_API_URL", DEFAULT_API_URL).rstrip("/")
    return f"{api.removesuffix('/api')}/runs/flow-run/{flow_run_id}"
