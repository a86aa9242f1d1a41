"""Starting an incident's runbooks and following them to their reports.

Each routed runbook starts once, unless its cooldown or hourly cap per target says no (the
timeline then says which, and why). In-process, a runbook is a subflow of the incident and
reports through ``runbooks.engine.live``; deployed, it is a deployment run (its gate
suspends and frees the worker) followed through its Prefect events and state — handed to a
deployment only while a live runner or worker serves it, else run in-process, said so.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, cast
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterTags,
)
from prefect.client.schemas.sorting import FlowRunSort
from prefect.context import TagsContext

from checks.findings import Finding
from flows.config import OncallConfig
from flows.decisions import sealed_input
from flows.incident_timeline import Timeline
from flows.intake import served
from flows.prefect_api import PrefectAPI
from integrations.alerts import Alert
from runbooks.engine.guard import seal_context
from runbooks.engine.model import ActionResult, Approval, Plan, RunbookReport, RunContext

__all__ = ["Launcher", "RunbookUse", "route", "runbook"]

REPORT_GRACE_S = 15.0  # a deployed run that ended: how long its report event may take


class RunbookUse(NamedTuple):
    """What an incident needs of a runbook."""

    params: Any  # the pydantic params model
    flow: Any  # the runbook's Prefect flow
    checks: Any  # async (service, params) -> list[Finding], for verification


def runbook(name: str) -> RunbookUse:
    """The one place the incident reads the runbook catalog."""
    from runbooks.catalog import require
    from runbooks.engine.kernel import flow_of

    found = require(name)
    return RunbookUse(found.params, flow_of(found), found.diagnose)


def route(config: OncallConfig, alert: Alert) -> list[tuple[str, str, dict[str, Any]]]:
    """(runbook, service, params) for every route the alert matches, each runbook once."""
    fields = {
        **alert.labels,
        "service": alert.service,
        "source": alert.source,
        "title": alert.title,
        "alertname": alert.labels.get("alertname", alert.title),
    }
    chosen: dict[str, tuple[str, str, dict[str, Any]]] = {}
    for rule in config.routes_for(fields):
        for name in rule.runbooks:
            chosen.setdefault(
                name, (name, rule.service or alert.service, rule.params.get(name, {}))
            )
    return list(chosen.values())


class Launcher:
    """The runbooks of one incident: started, waiting at gates, finished."""

    def __init__(
        self,
        config: OncallConfig,
        timeline: Timeline,
        *,
        api_url: str,
        approve_as: str | None,
    ) -> None:
        self.config = config
        self.timeline = timeline
        self.inc = timeline.inc  # the incident and its tags: the timeline's
        self.extra_tags = timeline.extra_tags
        self.api_url = api_url
        self.approve_as = approve_as
        self.remote = False  # runbooks as deployment runs (the incident itself is one)
        self.events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        # Set when a runbook reports: the incident handles it at once, not at its next tick.
        self.wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.children: dict[str, str] = {}  # runbook flow run id -> runbook
        self.waiting: dict[str, dict[str, Any]] = {}  # flow run id -> gate
        self.tasks: dict[str, asyncio.Task] = {}
        self.routes: list[tuple[str, Any, Any]] = []
        self.remote_pending: dict[str, str] = {}  # flow run id -> runbook
        self.remote_reports: dict[str, RunbookReport] = {}
        self.remote_done_at: dict[str, float] = {}
        self.events_since = datetime.now(UTC).isoformat()
        self.seen_events: set[str] = set()

    @property
    def running(self) -> bool:
        return bool(self.tasks or self.remote_pending)

    async def start(self, alert: Alert, context: RunContext) -> None:
        routes = route(self.config, alert)
        for name, service_name, params in routes:
            use = runbook(name)
            try:
                service = self.config.service(service_name)
                typed = use.params.model_validate(params)
            except Exception as exc:  # a broken route must not stop the incident
                self._skip(name, service_name, "invalid", f"{name} not started: {exc}")
                continue
            if await self._held_back(name, service.name):
                continue
            # Sealed for this runbook and target: its gate trusts the severity and requester.
            sealed = seal_context(context, runbook=name, target=service.name)
            self.routes.append((name, service, typed))
            self.inc.runbooks.append(name)
            # Children get their own tags, not the parent's (they are not incidents).
            tags = {
                "oncall",
                f"runbook:{name}",
                f"target:{service.name}",
                f"incident:{self.inc.id}",
                *self.extra_tags,
            }
            if self.remote and await self._deployed(name, service, typed, sealed, tags):
                continue
            self.timeline.record(
                "runbook", f"started runbook {name} on {service.name}", runbook=name
            )
            with TagsContext(current_tags=tags):
                self.tasks[name] = asyncio.create_task(
                    use.flow(
                        service=service, params=typed, approve_as=self.approve_as, context=sealed
                    )
                )
        if not routes:
            self.timeline.record("runbook", "no runbook matches this alert: investigating by hand")
        elif not self.routes:
            self.timeline.record("runbook", "no runbook started (see above): investigating by hand")

    async def _deployed(
        self, name: str, service: Any, typed: Any, context: RunContext, tags: set[str]
    ) -> bool:
        """Hands the runbook to its deployment if someone runs it; False to run it here."""
        from prefect.deployments import run_deployment

        deployment = f"{name}/{name}"
        with PrefectAPI(self.api_url) as api:
            why = await asyncio.to_thread(served, api, deployment)
        if why:
            self.timeline.record(
                "runbook", f"{why}: running {name} inside the incident instead", runbook=name
            )
            return False
        run: Any = await cast(Any, run_deployment)(
            deployment,
            parameters={
                "service": service.name,
                "params": typed.model_dump(mode="json"),
                "approve_as": self.approve_as,
                "context": context.model_dump(mode="json"),
            },
            tags=sorted(tags),
            timeout=0,
            as_subflow=False,
        )
        self.timeline.record(
            "runbook", f"started runbook {name} on {service.name} (deployment run)", runbook=name
        )
        self.children[str(run.id)] = name
        self.remote_pending[str(run.id)] = name
        return True

    def _skip(self, runbook_name: str, service: str, kind: str, text: str) -> None:
        """A runbook held back: on the timeline as what it is (never as a missing runbook)."""
        self.inc.skipped.append(
            {"runbook": runbook_name, "service": service, "kind": kind, "reason": text}
        )
        self.timeline.record("skipped", text, runbook=runbook_name, reason=kind)

    async def _held_back(self, name: str, service: str) -> bool:
        """Per runbook and target: a cooldown since the last run and a cap per hour."""
        rc = self.config.receiver
        async with get_client() as client:
            recent = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=[f"runbook:{name}", f"target:{service}"]),
                    expected_start_time=FlowRunFilterExpectedStartTime(
                        after_=datetime.now(UTC) - timedelta(hours=1)
                    ),
                ),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,  # the client sends None otherwise
                limit=min(200, rc.max_runs_per_hour + 1),
            )
        if len(recent) >= rc.max_runs_per_hour:
            self._skip(
                name,
                service,
                "run cap",
                f"{name} not started (run cap): {len(recent)} runs on {service} in the last"
                f" hour (cap {rc.max_runs_per_hour})",
            )
            return True
        latest = max((r.expected_start_time for r in recent if r.expected_start_time), default=None)
        if latest and (datetime.now(UTC) - latest).total_seconds() < rc.cooldown:
            self._skip(
                name,
                service,
                "cooldown",
                f"{name} not started (cooldown): it ran on {service} at {latest:%H:%M:%S} UTC,"
                f" less than {rc.cooldown:.0f}s ago",
            )
            return True
        return False

    # --- following runbooks ------------------------------------------------------------

    def on_live(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "start" and data.get("incident_id") == self.inc.id:
            self.children[data["flow_run_id"]] = data["runbook"]
        if data.get("flow_run_id") in self.children:
            self.events.put_nowait((kind, data))
            self._loop.call_soon_threadsafe(self.wake.set)

    async def nap(self, seconds: float) -> None:
        """Waits until the next tick is due, or until a runbook of this incident reports."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), timeout=seconds)
        self.wake.clear()

    def finished_tasks(self) -> list[tuple[str, RunbookReport | BaseException]]:
        """In-process runbooks that ended since the last call, with their report or error."""
        out: list[tuple[str, RunbookReport | BaseException]] = []
        for name, task_ in list(self.tasks.items()):
            if not task_.done():
                continue
            del self.tasks[name]
            if task_.cancelled():
                out.append((name, asyncio.CancelledError()))
            else:
                exc = task_.exception()
                out.append((name, exc if exc is not None else task_.result()))
        return out

    async def poll_remote(self) -> tuple[list[tuple[str, RunbookReport]], list[str]]:
        """Deployed runbooks: queues their events; returns (finished with a report, ended
        without one)."""
        if not self.children or not self.remote:
            return [], []
        with PrefectAPI(self.api_url) as api:
            events = await asyncio.to_thread(api.events, list(self.children), self.events_since)
            states = {
                rid: (await asyncio.to_thread(api.flow_run, rid))["state"]["type"]
                for rid in list(self.remote_pending)
            }
        for event in events:
            if event["id"] in self.seen_events:
                continue
            self.seen_events.add(event["id"])
            self.events_since = max(self.events_since, event["occurred"])
            run_id = next(
                (
                    r["prefect.resource.id"].removeprefix("prefect.flow-run.")
                    for r in event.get("related", [])
                    if r.get("prefect.resource.role") == "flow-run"
                ),
                None,
            )
            if run_id not in self.children:
                continue
            translated = _from_event(event["event"], event.get("payload") or {}, run_id)
            if translated is None:
                continue
            kind, data = translated
            if kind == "report":
                self.remote_reports[run_id] = data["report"]
            else:
                self.events.put_nowait((kind, data))
        finished, lost = [], []
        now = time.monotonic()
        for run_id, state in states.items():
            if state not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                continue
            self.remote_done_at.setdefault(run_id, now)
            name = self.remote_pending[run_id]
            report = self.remote_reports.get(run_id)
            if report is not None:
                del self.remote_pending[run_id]
                finished.append((name, report))
            elif now - self.remote_done_at[run_id] > REPORT_GRACE_S:
                del self.remote_pending[run_id]
                self.timeline.record(
                    "runbook", f"{name} ended {state.lower()} without a report", runbook=name
                )
                if self.waiting.pop(run_id, None) is not None:
                    lost.append(name)  # a suspended gate that expired: nobody decided
        return finished, lost

    async def cancel_waiting(self, reason: str) -> None:
        """Rejects every plan still waiting for approval: nothing unapproved will run."""
        from prefect.flow_runs import aresume_flow_run

        for run_id, gate in list(self.waiting.items()):
            with contextlib.suppress(Exception):  # already decided elsewhere: fine
                await aresume_flow_run(
                    UUID(run_id),
                    run_input=sealed_input(
                        gate["record"],
                        run_id=run_id,
                        approved=False,
                        reason=reason,
                        approver="oncall",
                        identity=f"oncall:incident:{self.inc.id}",
                        channel="incident",
                    ),
                )
                self.timeline.record(
                    "cancel", f"{self.children.get(run_id)}: plan cancelled: {reason}"
                )

    async def stop(self, timeout: float = 10) -> None:
        """Cancels in-process runbooks: none outlives its incident at a gate nobody watches."""
        unfinished = [t for t in self.tasks.values() if not t.done()]
        for task_ in unfinished:
            task_.cancel()
        if unfinished:
            await asyncio.wait(unfinished, timeout=timeout)

    def runbook_lines(self) -> list[str]:
        return [
            f"- {name}: waiting for approval (run {run_id})"
            for run_id, name in self.children.items()
            if run_id in self.waiting
        ]


def _from_event(
    name: str, payload: dict[str, Any], run_id: str
) -> tuple[str, dict[str, Any]] | None:
    """A runbook's Prefect event as the (kind, data) the incident handles."""
    base = {"flow_run_id": run_id}
    if name.startswith("oncall.finding."):
        return "finding", {**base, "finding": Finding.model_validate(payload)}
    if name == "oncall.plan.proposed":
        return "plan", {**base, "plan": Plan.model_validate(payload)}
    if name == "oncall.gate.waiting":
        return "gate", {**payload, **base, "plan": Plan.model_validate(payload["plan"])}
    if name.startswith("oncall.approval."):
        return "approval", {**base, "approval": Approval.model_validate(payload)}
    if name.startswith("oncall.action."):
        return "result", {**base, "result": ActionResult.model_validate(payload)}
    if name.startswith("oncall.runbook."):
        return "report", {**base, "report": RunbookReport.model_validate(payload)}
    return None
