"""The incident parent flow: declare → classify → notify → run runbooks → verify → resolve.

One flow run per incident, named ``INC-<n> <severity> <title>`` and tagged with its
id, severity, service and status; the routed runbooks run as parallel subflows with
their own approval gates; the timeline, a report and the post-mortem are artifacts.
Acknowledgements, manual resolution and joining alerts arrive as flow run inputs
(``oncall-ctl-*``) written by ``oncall ack``/``resolve`` and the alert intake.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterTags,
)
from prefect.client.schemas.sorting import FlowRunSort
from prefect.context import FlowRunContext, TagsContext
from prefect.events import emit_event

from checks.findings import Finding, Severity
from checks.severity import SeverityRule, classify
from flows.config import OncallConfig, configured_policy, find_config, load_config
from flows.decisions import sealed_input
from flows.incident_model import Incident, IncidentStatus, incident_labels, incident_tags
from flows.intake import CONTROL_PREFIX
from flows.notify import Notifier
from flows.postmortem import postmortem_markdown, root_cause
from integrations.alerts import Alert
from integrations.errors import Unreachable
from runbooks.catalog import require as runbook_named
from runbooks.engine import live
from runbooks.engine.gate import set_policy_source
from runbooks.engine.guard import seal_context
from runbooks.engine.model import ActionResult, Approval, Outcome, Plan, RunbookReport, RunContext

# approvals: from the oncall.yaml this process uses, never from the incident's parameters
set_policy_source(configured_policy)

__all__ = ["CONTROL_PREFIX", "incident", "route"]

TICK_S = 1.0
API_OUTAGE_S = 600.0  # how long an incident rides out its Prefect API being away


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


async def _number(run_id: str, start: datetime, my_tags: list[str]) -> int:
    """INC-<n>: incident runs expected to start up to this one, in order."""
    async with get_client() as client:
        count = await client.count_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=["incident"]),
                expected_start_time=FlowRunFilterExpectedStartTime(before_=start),
            )
        )
    return count + (0 if "incident" in my_tags else 1)


@task(name="verify-recovery", cache_policy=NO_CACHE)
async def _verify(checks: list[tuple[str, Any, Any, Any]]) -> list[Finding]:
    batches = await asyncio.gather(*(fn(service, params) for _, fn, service, params in checks))
    return [f for batch in batches for f in batch]


class IncidentRun:
    """The state machine behind one incident flow run."""

    def __init__(
        self,
        config: OncallConfig,
        alert: Alert,
        incident: Incident,
        *,
        approve_as: str | None,
        requested_by: str | None,
        extra_tags: list[str],
    ):
        self.config = config
        self.alert = alert
        self.inc = incident
        self.approve_as = approve_as
        self.requested_by = requested_by
        self.extra_tags = extra_tags
        self.logger = get_run_logger()
        self.events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        # Set when a runbook of this incident reports: the loop handles it at once instead
        # of at its next tick (a finding reaches Slack ~1 s sooner).
        self.wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.children: dict[str, str] = {}  # runbook flow run id -> runbook
        self.waiting: dict[str, dict[str, Any]] = {}  # flow run id -> gate
        self.tasks: dict[str, asyncio.Task] = {}
        # Deployed mode: runbooks run as their own deployment runs (so their gates can
        # suspend and free the worker); we follow them through their Prefect events.
        self.remote = False
        self.remote_pending: dict[str, str] = {}  # flow run id -> runbook
        self.remote_reports: dict[str, RunbookReport] = {}
        self.remote_done_at: dict[str, float] = {}
        self.events_since = datetime.now(UTC).isoformat()
        self.seen_events: set[str] = set()
        self.announced: set[tuple[str, str]] = set()
        self.routes: list[tuple[str, Any, Any]] = []
        self.seen_inputs: set[str] = set()
        self.alert_resolved = False
        self.verify_started: float | None = None
        self.healthy_since: float | None = None
        self.last_verify: float = 0.0
        self.verify_failed = False
        self.notifier = Notifier(config.notifications, report=self._notified)
        self._artifact_dirty = True
        self._last_artifact = 0.0
        self.resync = False  # a tick failed half-way: tags and artifacts may be stale

    # --- recording --------------------------------------------------------------------

    def record(self, kind: str, text: str, **data: Any) -> None:
        entry = self.inc.add(kind, text, **data)
        self._artifact_dirty = True
        live.publish("timeline", {"incident_id": self.inc.id, "entry": entry})
        self.logger.info("%s: %s", self.inc.id, text)
        emit_event(
            event=f"oncall.incident.{kind}",
            resource={
                "prefect.resource.id": f"oncall.incident.{self.inc.id}",
                "prefect.resource.name": f"{self.inc.id} {self.inc.title}",
            },
            related=[
                {
                    "prefect.resource.id": f"prefect.flow-run.{self.inc.flow_run_id}",
                    "prefect.resource.role": "flow-run",
                }
            ],
            payload={
                "text": text,
                "severity": str(self.inc.severity),
                "status": str(self.inc.status),
                **_jsonable(data),
            },
        )

    def _notified(self, channel: str, sentence: str, ok: bool) -> None:
        self.record(
            "notify", sentence if ok else f"notification failed: {sentence}", channel=channel, ok=ok
        )

    async def sync_run(self) -> None:
        """Puts the incident's state in its flow run's name, tags and labels."""
        async with get_client() as client:
            await client.update_flow_run(
                self.inc.flow_run_id,
                name=self.inc.run_name,
                tags=[*incident_tags(self.inc), *self.extra_tags],
            )
            # What `oncall incidents` needs to judge the SLA as the post-mortem does.
            labels = incident_labels(self.inc, self.config.sla_for(self.inc.severity))
            await client.update_flow_run_labels(self.inc.flow_run_id, labels)

    async def write_artifacts(self, force: bool = False) -> None:
        if not force and (not self._artifact_dirty or time.monotonic() - self._last_artifact < 2):
            return
        self._artifact_dirty = False
        self._last_artifact = time.monotonic()
        key = self.inc.id.lower()
        lines = [f"# {self.inc.id} timeline", "", "| time (UTC) | event |", "|---|---|"]
        lines += [f"| {e.at:%H:%M:%S} | {e.text.replace('|', '/')} |" for e in self.inc.timeline]
        await acreate_markdown_artifact(
            "\n".join(lines), key=f"{key}-timeline", description=f"{self.inc.id} timeline"
        )
        await acreate_markdown_artifact(
            self.report_markdown(),
            key=f"{key}-report",
            description=f"{self.inc.id} {self.inc.status}",
        )
        await acreate_markdown_artifact(
            postmortem_markdown(self.inc, self.config.sla_for(self.inc.severity)),
            key=f"{key}-postmortem",
            description=f"{self.inc.id} post-mortem draft",
        )

    def report_markdown(self) -> str:
        inc = self.inc
        out = [
            f"# {inc.id} {inc.severity} {inc.title}",
            "",
            f"- Status: **{inc.status}**",
            f"- Service: {inc.service}",
            f"- Severity: {inc.severity} — {'; '.join(inc.severity_reasons)}",
            f"- Opened: {inc.opened_at:%Y-%m-%d %H:%M:%S} UTC",
            f"- Acknowledged: {inc.acked_by or 'not yet'}",
            "",
            "## Runbooks",
            "",
        ]
        for report in inc.reports:
            out.append(
                f"- {report['runbook']}: {report['outcome']}"
                f" ({len(report.get('results', []))} action(s))"
            )
        for run_id, runbook in self.children.items():
            if run_id in self.waiting:
                out.append(f"- {runbook}: waiting for approval (run {run_id})")
        return "\n".join(out)

    # --- severity and escalation ------------------------------------------------------

    async def raise_severity(self, severity: Severity | None, reason: str) -> None:
        if severity is None or not severity.more_severe_than(self.inc.severity):
            return
        before = self.inc.severity
        self.inc.severity = severity
        self.inc.severity_reasons.append(reason)
        self.record("severity", f"severity raised {before} → {severity}: {reason}")
        await self.sync_run()
        await self.notifier.update(self.inc, actions=[f"severity raised to {severity}: {reason}"])

    def _clock(self) -> float | None:
        """Seconds the escalation timer has been running, or None when it is stopped."""
        now = datetime.now(UTC)
        if not self.inc.acked_at:
            return (now - self.inc.opened_at).total_seconds()
        if self.waiting:
            oldest = min(datetime.fromisoformat(g["waiting_since"]) for g in self.waiting.values())
            return (now - oldest).total_seconds()
        return None

    async def escalate(self, force_reason: str | None = None) -> None:
        chain = self.config.escalation.get(self.inc.severity) or []
        done = len(self.inc.escalated_to) + 1  # level 0 was told when the incident opened
        if done >= len(chain):
            return
        clock = self._clock()
        level = chain[done]
        if force_reason is None and (clock is None or clock < level.after):
            return
        why = force_reason or (
            f"unacknowledged for {clock:.0f}s"
            if not self.inc.acked_at
            else f"approval waiting for {clock:.0f}s"
        )
        self.inc.escalated_to.append(level.name)
        self.record("escalate", f"escalated to {level.name}: {why}", level=level.name)
        await self.notifier.escalate(self.inc, level, why)

    # --- runbooks ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return bool(self.tasks or self.remote_pending)

    async def start_runbooks(self) -> None:
        unsealed = RunContext(
            incident_id=self.inc.id, severity=self.inc.severity, requested_by=self.requested_by
        )
        for name, service_name, params in route(self.config, self.alert):
            spec = runbook_named(name)
            try:
                service = self.config.service(service_name)
                typed = spec.params.model_validate(params)
            except Exception as exc:  # a broken route must not stop the incident
                self.record("runbook", f"{name} not started: {exc}", runbook=name)
                continue
            if await self.cooling_down(name, service.name):
                continue
            # Sealed for this runbook and target: the gate trusts its severity and requester.
            context = seal_context(unsealed, runbook=name, target=service.name)
            self.routes.append((name, service, typed))
            self.inc.runbooks.append(name)
            self.record("runbook", f"started runbook {name} on {service.name}", runbook=name)
            # Children get their own tags, not the parent's (they are not incidents).
            child_tags = {
                "oncall",
                f"runbook:{name}",
                f"target:{service.name}",
                f"incident:{self.inc.id}",
                *self.extra_tags,
            }
            if self.remote:
                from prefect.deployments import run_deployment

                run = await run_deployment(
                    f"{name}/{name}",
                    parameters={
                        "service": service.name,
                        "params": typed.model_dump(mode="json"),
                        "approve_as": self.approve_as,
                        "context": context.model_dump(mode="json"),
                    },
                    tags=sorted(child_tags),
                    timeout=0,
                    as_subflow=False,
                )
                self.children[str(run.id)] = name
                self.remote_pending[str(run.id)] = name
                continue
            with TagsContext(current_tags=child_tags):
                self.tasks[name] = asyncio.create_task(
                    spec.flow(
                        service=service, params=typed, approve_as=self.approve_as, context=context
                    )
                )
        if not self.routes:
            self.record("runbook", "no runbook matches this alert: investigating by hand")

    async def cooling_down(self, runbook: str, service: str) -> bool:
        """Per runbook and target: a cooldown since the last run and a cap per hour."""
        rc = self.config.receiver
        async with get_client() as client:
            recent = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=[f"runbook:{runbook}", f"target:{service}"]),
                    expected_start_time=FlowRunFilterExpectedStartTime(
                        after_=datetime.now(UTC) - timedelta(hours=1)
                    ),
                ),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,  # the client sends None otherwise
                limit=min(200, rc.max_runs_per_hour + 1),
            )
        if len(recent) >= rc.max_runs_per_hour:
            self.record(
                "runbook",
                f"{runbook} not started: {len(recent)} runs on {service} in"
                f" the last hour (cap {rc.max_runs_per_hour})",
                runbook=runbook,
            )
            return True
        latest = max((r.expected_start_time for r in recent if r.expected_start_time), default=None)
        if latest and (datetime.now(UTC) - latest).total_seconds() < rc.cooldown:
            self.record(
                "runbook",
                f"{runbook} not started: it ran on {service} at"
                f" {latest:%H:%M:%S} UTC (cooldown {rc.cooldown:.0f}s)",
                runbook=runbook,
            )
            return True
        return False

    async def poll_remote(self) -> None:
        """Follows deployed runbook runs through their events and states."""
        from flows.prefect_api import PrefectAPI

        if not self.children:
            return
        with PrefectAPI(_api_url()) as api:
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
                await self.handle(kind, data)
        now = time.monotonic()
        for run_id, state in states.items():
            if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                self.remote_done_at.setdefault(run_id, now)
                report = self.remote_reports.get(run_id)
                name = self.remote_pending[run_id]
                if report is not None:
                    del self.remote_pending[run_id]
                    await self.finished(name, report)
                elif now - self.remote_done_at[run_id] > 15:  # its report never came
                    del self.remote_pending[run_id]
                    self.record(
                        "runbook", f"{name} ended {state.lower()} without a report", runbook=name
                    )
                    if run_id in self.waiting:
                        # A suspended gate that expired on the server: nobody decided.
                        self.waiting.pop(run_id, None)
                        if self.config.approvals.escalate_on_timeout:
                            await self.escalate(force_reason=f"{name} approval expired")

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

    async def handle(self, kind: str, data: dict[str, Any]) -> None:
        runbook = self.children.get(data.get("flow_run_id", ""), "?")
        if kind == "finding":
            finding: Finding = data["finding"]
            if finding.status.is_problem:
                self.record(
                    "finding",
                    f"{runbook}: {finding.summary}",
                    runbook=runbook,
                    check=finding.check,
                    status=str(finding.status),
                )
                if self.inc.status is IncidentStatus.INVESTIGATING:
                    await self.set_status(IncidentStatus.IDENTIFIED, finding.summary)
                await self.raise_severity(
                    finding.severity, f"{runbook}/{finding.check}: {finding.summary}"
                )
        elif kind in ("plan", "gate") and _announcement(kind, data) in self.announced:
            return  # a suspended run re-announces its plan when it resumes
        elif kind == "plan" and data["plan"].actions:
            self.announced.add(_announcement(kind, data))
            self.record("plan", f"{runbook} proposes: {data['plan'].summary}", runbook=runbook)
        elif kind == "gate":
            self.announced.add(_announcement(kind, data))
            self.waiting[data["flow_run_id"]] = data
            self.record(
                "gate",
                f"{runbook} waits for approval: {data['summary']}",
                runbook=runbook,
                flow_run_id=data["flow_run_id"],
            )
            await self.notifier.approval_needed(self.inc, data)
        elif kind == "approval":
            self.waiting.pop(data["flow_run_id"], None)
            a = data["approval"]
            verdict = a.verdict
            self.record(
                "approval",
                f"{runbook} plan {verdict} by {a.approver} via {a.channel}"
                + (f" ({a.identity})" if a.identity else "")
                + f": {a.why or a.reason}",
                runbook=runbook,
                approver=a.approver,
                channel=a.channel,
                approved=a.approved,
            )
            if a.channel == "timeout" and self.config.approvals.escalate_on_timeout:
                await self.escalate(force_reason=f"{runbook} approval timed out")
        elif kind == "result":
            r = data["result"]
            self.record(
                "action",
                f"{runbook}: {r.title}: {r.status} — {r.detail}",
                runbook=runbook,
                status=r.status,
            )
            if r.status in ("done", "partial") and self.inc.mitigated_at is None:
                self.inc.mitigated_at = datetime.now(UTC)
                await self.sync_run()  # the SLA labels carry the mitigation time

    async def finished(self, name: str, report: RunbookReport) -> None:
        self.inc.reports.append(report.model_dump(mode="json"))
        self.record(
            "runbook",
            f"{name} finished: {report.outcome}",
            runbook=name,
            outcome=str(report.outcome),
        )
        await self.raise_severity(report.severity, f"{name} findings")

    async def collect_finished(self) -> None:
        for name, task_ in list(self.tasks.items()):
            if not task_.done():
                continue
            del self.tasks[name]
            try:
                report: RunbookReport = task_.result()
            except Exception as exc:  # a crashed runbook is a fact on the timeline
                self.record("runbook", f"{name} failed: {type(exc).__name__}: {exc}", runbook=name)
                continue
            self.inc.reports.append(report.model_dump(mode="json"))
            self.record(
                "runbook",
                f"{name} finished: {report.outcome}",
                runbook=name,
                outcome=str(report.outcome),
            )
            await self.raise_severity(report.severity, f"{name} findings")
        if not self.running and self.routes and self.verify_started is None:
            outcomes = {r["outcome"] for r in self.inc.reports}
            if Outcome.FIXED in outcomes or self.alert_resolved:
                why = (
                    "a fix has been applied; monitoring the results"
                    if Outcome.FIXED in outcomes
                    else "the alert has resolved; confirming recovery"
                )
                await self.set_status(IncidentStatus.MONITORING, why)
                self.verify_started = time.monotonic()

    async def verify(self) -> None:
        """Re-runs the runbooks' checks until healthy for the configured window."""
        v = self.config.verification
        if self.verify_started is None or self.verify_failed:
            return
        now = time.monotonic()
        if now - self.last_verify < v.interval:
            return
        self.last_verify = now
        checks = [
            (name, runbook_named(name).diagnose, service, params)
            for name, service, params in self.routes
        ]
        findings = await _verify(checks)
        problems = [f for f in findings if f.status.is_problem]
        if problems:
            self.healthy_since = None
            if now - self.verify_started > v.timeout:
                self.verify_failed = True
                await self.set_status(
                    IncidentStatus.IDENTIFIED,
                    f"not recovered after {v.timeout:.0f}s: {problems[0].summary}",
                )
            return
        if self.healthy_since is None:
            self.healthy_since = now
            self.record("verify", f"checks healthy; confirming for {v.healthy_for:.0f}s")
        if now - self.healthy_since >= v.healthy_for:
            await self.resolve("oncall", f"verified healthy for {v.healthy_for:.0f}s")

    # --- control inputs ---------------------------------------------------------------

    async def poll_controls(self) -> None:
        async with get_client() as client:
            inputs = await client.filter_flow_run_input(
                self.inc.flow_run_id, CONTROL_PREFIX, limit=50, exclude_keys=self.seen_inputs
            )
        for item in sorted(inputs, key=lambda i: i.created or datetime.min.replace(tzinfo=UTC)):
            self.seen_inputs.add(item.key)
            try:
                message = json.loads(item.value)
            except ValueError:
                continue
            await self.control(message)

    async def control(self, message: dict[str, Any]) -> None:
        kind = message.get("kind")
        if kind == "ack" and not self.inc.acked_at:
            self.inc.acked_at = datetime.now(UTC)
            self.inc.acked_by = str(message.get("by"))
            identity = message.get("identity")
            self.record(
                "ack",
                f"{self.inc.acked_by} acknowledged" + (f" ({identity})" if identity else ""),
                by=self.inc.acked_by,
            )
            await self.sync_run()
            await self.notifier.acknowledged(self.inc)
        elif kind == "resolve":
            await self.resolve(
                str(message.get("by")), str(message.get("note") or "resolved by hand")
            )
        elif kind == "alert":
            alert = Alert.model_validate(message["alert"])
            self.inc.alerts += 1
            if alert.status == "resolved":
                self.alert_resolved = True
                self.record("alert", f"alert resolved: {alert.title}", status="resolved")
                await self.cancel_waiting("the alert resolved before approval")
                if not self.running and self.verify_started is None and self.routes:
                    await self.set_status(IncidentStatus.MONITORING, "the alert has resolved")
                    self.verify_started = time.monotonic()
                elif not self.routes:
                    await self.resolve("alertmanager", "the alert resolved")
            else:
                self.record("alert", f"alert joined: {alert.title}", fingerprint=alert.fingerprint)
                await self.raise_severity(alert.severity, f"joined alert says {alert.severity}")

    async def cancel_waiting(self, reason: str) -> None:
        """Rejects every plan still waiting for approval: nothing unapproved will run."""
        from prefect.flow_runs import aresume_flow_run

        for run_id, gate in list(self.waiting.items()):
            with contextlib.suppress(Exception):  # already decided elsewhere: fine
                await aresume_flow_run(
                    run_id,
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
                self.record("cancel", f"{self.children.get(run_id)}: plan cancelled: {reason}")

    async def set_status(self, status: IncidentStatus, why: str) -> None:
        if self.inc.status == status:
            return
        self.inc.status = status
        self.record("status", f"status {status}: {why}")
        await self.sync_run()
        await self.notifier.update(
            self.inc,
            actions=[why],
            statuspage_body={
                IncidentStatus.IDENTIFIED: f"We have identified the issue: {why}. We are working"
                " on a fix.",
                IncidentStatus.MONITORING: "A fix has been implemented and we are monitoring the"
                " results.",
            }.get(status),
        )

    async def resolve(self, by: str, note: str) -> None:
        if self.inc.resolved_at:
            return
        await self.cancel_waiting(f"incident resolved by {by}")
        for task_ in self.tasks.values():
            task_.cancel()
        self.inc.resolved_at = datetime.now(UTC)
        self.inc.resolved_by = by
        self.inc.resolution_note = note
        self.inc.status = IncidentStatus.RESOLVED
        self.record("resolved", f"resolved by {by}: {note}", by=by)
        await self.sync_run()
        actions = [
            f"{a['title']}: {a['detail']}" for r in self.inc.reports for a in r.get("results", [])
        ]
        await self.notifier.resolved(
            self.inc,
            root_cause=root_cause(self.inc),
            resolution=actions or [note],
            verification=[note],
        )

    # --- the loop ---------------------------------------------------------------------

    async def tick(self) -> None:
        if self.resync:
            self._artifact_dirty = True
            await self.sync_run()
            self.resync = False
        while not self.events.empty():
            await self.handle(*self.events.get_nowait())
        if self.remote:
            await self.poll_remote()
        await self.poll_controls()
        await self.collect_finished()
        await self.verify()
        if not self.inc.resolved_at:
            await self.escalate()
            due = self.notifier.next_update_due(self.inc)
            if due and datetime.now(UTC) >= due:
                recent = [e.text for e in self.inc.timeline[-3:]]
                await self.notifier.update(self.inc, actions=recent)
        await self.write_artifacts()


def _api_away(exc: BaseException) -> bool:
    """The Prefect API is restarting or unreachable: a reason to wait, not to fail."""
    if isinstance(exc, Unreachable | httpx.TransportError | ConnectionError):
        return True
    status = getattr(exc, "status", None)
    if status is None and isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
    return isinstance(status, int) and status >= 500


class _Outage:
    """Lets the incident's loop ride out a Prefect server restart (every tick uses the API)."""

    def __init__(self, state: IncidentRun) -> None:
        self.state = state
        self.since: float | None = None

    async def attempt(self, step: Any) -> bool:
        """Awaits ``step()``; False when the API was away (re-raises once away too long)."""
        try:
            await step()
        except Exception as exc:
            if not _api_away(exc):
                raise
            now = time.monotonic()
            if self.since is None:
                self.since = now
                self.state.logger.warning("Prefect API away (%s); the incident waits", exc)
            elif now - self.since > API_OUTAGE_S:
                raise
            self.state.resync = True
            return False
        if self.since is not None:
            away = time.monotonic() - self.since
            self.state.logger.info("Prefect API back after %.0fs", away)
            self.since = None
        return True


def _announcement(kind: str, data: dict[str, Any]) -> tuple[str, str]:
    """What makes a plan or gate announcement unique (each approval round has its own key)."""
    return kind, f"{data['plan'].id}/{data.get('pause_key', '')}"


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


async def _deployed_mode(run: Any) -> bool:
    """Runbooks run as deployments when this incident itself runs from one and they exist."""
    if not run.deployment_id:
        return False
    from flows.prefect_api import PrefectAPI

    with PrefectAPI(_api_url()) as api:
        return await asyncio.to_thread(api.deployment, "db-connections/db-connections") is not None


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


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(data, default=str))


@flow(name="incident", log_prints=False)
async def incident(
    alert: Alert,
    config: OncallConfig | None = None,
    config_path: str | None = None,
    approve_as: str | None = None,
    requested_by: str | None = None,
    also: list[Alert] | None = None,
) -> dict[str, Any]:
    """Runs an incident: classify, notify, escalate, run runbooks, verify, resolve, post-mortem."""
    cfg = config or load_config(config_path or find_config())
    ctx = FlowRunContext.get()
    run = ctx.flow_run
    if run.deployment_id:
        # Parameters of a deployment run come from whoever reached the Prefect API: a
        # requester named there is not verified (approve_as is refused by the gates).
        requested_by = None
    my_tags = list(run.tags or [])
    number = await _number(str(run.id), run.expected_start_time or datetime.now(UTC), my_tags)
    rules = [SeverityRule.model_validate(r) for r in cfg.severity_rules]
    from checks.severity import DEFAULT_RULES

    verdict = classify(alert, rules=[*DEFAULT_RULES, *rules])
    inc = Incident(
        id=f"INC-{number}",
        title=alert.title,
        service=alert.service,
        severity=verdict.severity,
        severity_reasons=verdict.reasons,
        fingerprint=alert.fingerprint,
        flow_run_id=str(run.id),
        alerts=1,
    )
    # Keep tags like "drill"; the incident's own tags are rewritten by sync_run.
    own = ("fp:", "service:", "severity:", "status:", "INC-")
    extra = [
        t for t in my_tags if t not in ("oncall", "incident", "acked") and not t.startswith(own)
    ]
    state = IncidentRun(
        cfg, alert, inc, approve_as=approve_as, requested_by=requested_by, extra_tags=extra
    )
    await state.sync_run()
    state.record("alert", f"{alert.source} alert: {alert.title}", fingerprint=alert.fingerprint)
    state.record("declared", f"declared {inc.id} {inc.severity}: {'; '.join(verdict.reasons)}")
    # Announced while the runbooks start: a slow chat or paging API (retried with back-off)
    # must not hold up the diagnosis. Every later update waits for this announcement.
    declared = asyncio.create_task(
        state.notifier.declared(
            inc,
            impact=[alert.annotations.get("description", alert.title)],
            next_steps=["Runbooks diagnosing", "Updates on cadence"],
            link=None,
        )
    )
    if also:  # joining alerts may raise the severity: announced after the first one
        await declared
    for other in also or []:
        await state.control({"kind": "alert", "alert": other.model_dump(mode="json")})
    state.remote = await _deployed_mode(run)
    live.subscribe(state.on_live)
    outage = _Outage(state)
    try:
        await state.start_runbooks()
        await declared
        while not inc.resolved_at:
            await outage.attempt(state.tick)
            await state.nap(TICK_S)
        await asyncio.sleep(0)  # let cancelled runbooks settle
        for task_ in list(state.tasks.values()):
            with contextlib.suppress(BaseException):
                await task_
        while not state.events.empty():
            await state.handle(*state.events.get_nowait())
    finally:
        live.unsubscribe(state.on_live)
        # Stopped from outside (oncall serve shutting down): no runbook subflow outlives
        # its incident, paused at a gate nobody waits at any more.
        unfinished = [t for t in state.tasks.values() if not t.done()]
        for task_ in unfinished:
            task_.cancel()
        if unfinished:
            await asyncio.wait(unfinished, timeout=10)

    async def final() -> None:
        if state.resync:
            await state.sync_run()
            state.resync = False
        await state.write_artifacts(force=True)

    while not await outage.attempt(final):
        await asyncio.sleep(TICK_S)
    return inc.model_dump(mode="json")
