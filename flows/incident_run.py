"""The state machine behind one incident flow run (flows/incident.py runs it).

It decides; its parts each do one job: the record (incident_timeline), severity and
escalation (incident_escalation), the runbooks (incident_launch), alerts by fingerprint and
control inputs (incident_alerts), verification (incident_verify). An incident the intake
opened closes its registration in the intake store when it resolves (flows/spool.py):
atomically with alerts joining it, so none joins a closed incident unseen.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger

from checks.findings import Finding
from flows.config import OncallConfig
from flows.incident_alerts import AlertBook, joined_items, poll_controls
from flows.incident_escalation import Escalation
from flows.incident_launch import Launcher, runbook
from flows.incident_model import Incident, IncidentStatus
from flows.incident_timeline import Timeline
from flows.incident_verify import Verifier
from flows.notify import Notifier
from flows.postmortem import root_cause
from flows.spool import Spool, store_url
from integrations.alerts import Alert
from runbooks.engine.model import Outcome, RunbookReport

__all__ = ["IncidentRun"]


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
        intake: dict[str, str] | None = None,
    ):
        self.config = config
        self.alert = alert
        self.inc = incident
        self.requested_by = requested_by
        self.logger = get_run_logger()
        self.timeline = Timeline(incident, extra_tags, self.logger, config.sla_for)
        self.notifier = Notifier(config.notifications, report=self._notified)
        self.escalation = Escalation(config, incident, self.timeline, self.notifier)
        self.launcher = Launcher(config, self.timeline, api_url=_api_url(), approve_as=approve_as)
        self.verifier = Verifier(config.verification)
        self.book = AlertBook(incident)
        self.control_keys: set[str] = set()
        self.announced: set[tuple[str, str]] = set()  # plans and gates already on the timeline
        self.intake = intake
        self.resync = False  # a tick failed half-way: tags and artifacts may be stale
        self._told_waiting = False

    def record(self, kind: str, text: str, **data: Any) -> None:
        self.timeline.record(kind, text, **data)

    def _notified(self, channel: str, sentence: str, ok: bool) -> None:
        self.record(
            "notify", sentence if ok else f"notification failed: {sentence}", channel=channel, ok=ok
        )

    # --- runbook events -------------------------------------------------------------------

    async def handle(self, kind: str, data: dict[str, Any]) -> None:
        name = self.launcher.children.get(data.get("flow_run_id", ""), "?")
        waiting = self.launcher.waiting
        if kind == "finding":
            finding: Finding = data["finding"]
            if finding.status.is_problem:
                self.record(
                    "finding",
                    f"{name}: {finding.summary}",
                    runbook=name,
                    check=finding.check,
                    status=str(finding.status),
                )
                if self.inc.status is IncidentStatus.INVESTIGATING:
                    await self.set_status(IncidentStatus.IDENTIFIED, finding.summary)
                await self.escalation.raise_severity(
                    finding.severity, f"{name}/{finding.check}: {finding.summary}"
                )
        elif kind in ("plan", "gate") and _announcement(kind, data) in self.announced:
            return  # a suspended run re-announces its plan when it resumes
        elif kind == "plan" and data["plan"].actions:
            self.announced.add(_announcement(kind, data))
            self.record("plan", f"{name} proposes: {data['plan'].summary}", runbook=name)
        elif kind == "gate":
            self.announced.add(_announcement(kind, data))
            waiting[data["flow_run_id"]] = data
            self.record(
                "gate",
                f"{name} waits for approval: {data['summary']}",
                runbook=name,
                flow_run_id=data["flow_run_id"],
            )
            await self.notifier.approval_needed(self.inc, data)
        elif kind == "approval":
            waiting.pop(data["flow_run_id"], None)
            a = data["approval"]
            verdict = a.verdict
            self.record(
                "approval",
                f"{name} plan {verdict} by {a.approver} via {a.channel}"
                + (f" ({a.identity})" if a.identity else "")
                + f": {a.why or a.reason}",
                runbook=name,
                approver=a.approver,
                channel=a.channel,
                approved=a.approved,
            )
            if a.channel == "timeout" and self.config.approvals.escalate_on_timeout:
                await self.escalation.escalate(waiting, f"{name} approval timed out")
        elif kind == "result":
            r = data["result"]
            self.record(
                "action",
                f"{name}: {r.title}: {r.status} — {r.detail}",
                runbook=name,
                status=r.status,
            )
            if r.status in ("done", "partial") and self.inc.mitigated_at is None:
                self.inc.mitigated_at = datetime.now(UTC)
                await self.timeline.sync_run()  # the SLA labels carry the mitigation time

    async def finished(self, name: str, report: RunbookReport | BaseException) -> None:
        if isinstance(report, BaseException):  # a crashed runbook is a fact on the timeline
            self.record(
                "runbook", f"{name} failed: {type(report).__name__}: {report}", runbook=name
            )
            return
        self.inc.reports.append(report.model_dump(mode="json"))
        self.record(
            "runbook",
            f"{name} finished: {report.outcome}",
            runbook=name,
            outcome=str(report.outcome),
        )
        await self.escalation.raise_severity(report.severity, f"{name} findings")

    async def after_runbooks(self) -> None:
        """Once every runbook ended: monitor if a fix was applied or every alert resolved."""
        if self.launcher.running or not self.launcher.routes or self.verifier.started is not None:
            return
        fixed = any(r["outcome"] == Outcome.FIXED for r in self.inc.reports)
        quiet = self.book.any_resolved() and not self.book.firing()
        if fixed or quiet:
            await self.set_status(
                IncidentStatus.MONITORING,
                "a fix has been applied; monitoring the results"
                if fixed
                else "every alert has resolved; confirming recovery",
            )
            self.verifier.start()

    async def verify(self) -> None:
        checks = [(n, runbook(n).checks, s, p) for n, s, p in self.launcher.routes]
        verdict = await self.verifier.check(checks) if checks else "idle"
        v = self.config.verification
        if verdict == "failed" and self.inc.status is not IncidentStatus.IDENTIFIED:
            await self.set_status(
                IncidentStatus.IDENTIFIED,
                f"not recovered after {v.timeout:.0f}s: {self.verifier.problem}",
            )
        elif verdict == "healthy-since":
            self.record("verify", f"checks healthy; confirming for {v.healthy_for:.0f}s")
        elif verdict == "healthy":
            firing = self.book.firing()
            if not firing:
                await self.resolve(
                    "oncall", f"verified healthy for {v.healthy_for:.0f}s", auto=True
                )
            elif not self._told_waiting:
                self._told_waiting = True
                self.record(
                    "verify",
                    f"checks healthy; not resolving while {len(firing)} alert(s) still fire:"
                    f" {'; '.join(firing[:3])}",
                )

    # --- alerts and control inputs -------------------------------------------------------

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
            await self.timeline.sync_run()
            await self.notifier.acknowledged(self.inc)
        elif kind == "resolve":
            await self.resolve(
                str(message.get("by")), str(message.get("note") or "resolved by hand")
            )
        else:
            for item in joined_items(message):  # in the order the intake joined them
                await self.joined(item)

    async def joined(self, item: Any) -> None:
        """One joined alert, as the intake sends it: ``{"id": intake id, "alert": {...}}``."""
        try:
            alert = Alert.model_validate(item["alert"])
        except (KeyError, TypeError, ValueError) as exc:
            self.record("alert", f"unreadable alert input ignored: {exc}"[:300])
            return
        await self.on_alert(alert, item.get("id"))

    async def on_alert(self, alert: Alert, intake_id: str | None) -> None:
        """One alert of this incident: its fingerprint's state, and what follows from it."""
        change = self.book.add(alert, intake_id)
        fp = alert.fingerprint
        more_severe = alert.severity is not None and alert.severity.more_severe_than(
            self.inc.severity
        )
        if change in ("new", "refired") or (change == "repeat" and more_severe):
            verb = {"new": "joined", "refired": "re-fired"}.get(change, "joined (repeat)")
            self.record("alert", f"alert {verb}: {alert.title}", fingerprint=fp)
            self._told_waiting = False
            await self.escalation.raise_severity(
                alert.severity, f"joined alert says {alert.severity}"
            )
        if change not in ("resolved", "stale-resolve"):
            return
        firing = self.book.firing()
        still = f"; {len(firing)} still firing" if firing else "; no alert fires any more"
        self.record(
            "alert", f"alert resolved: {alert.title}{still}", status="resolved", fingerprint=fp
        )
        if firing:
            return
        await self.launcher.cancel_waiting("every alert resolved before approval")
        if not self.launcher.routes:
            await self.resolve(alert.source, "every alert resolved", auto=True)
        else:
            await self.after_runbooks()

    # --- status and resolution -----------------------------------------------------------

    async def set_status(self, status: IncidentStatus, why: str) -> None:
        if self.inc.status == status:
            return
        self.inc.status = status
        self.record("status", f"status {status}: {why}")
        await self.timeline.sync_run()
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

    async def close_intake(self, reason: str, *, force: bool) -> bool:
        """Closes this incident's registration in the intake store (if the intake opened it):
        False when an alert joined that this incident had not seen and it fires (not forced)."""
        if not self.intake:
            return True
        seen = {*self.book.seen, self.intake.get("alert_id", "")}
        registration = self.intake["registration"]

        def close() -> Any:
            store = Spool(store_url(self.config))
            try:
                return store.close_incident(registration, seen, reason=reason, force=force)
            finally:
                store.close()

        closing = await asyncio.to_thread(close)
        for entry in closing.late:
            if entry.id in closing.handed_back:
                self.book.seen.add(entry.id)
                self.record(
                    "alert",
                    f"alert arrived while resolving: {entry.alert.title}: handed back to the"
                    " intake (it opens a new incident)",
                    fingerprint=entry.alert.fingerprint,
                )
            else:
                await self.on_alert(entry.alert, entry.id)
        return closing.closed

    async def resolve(self, by: str, note: str, *, auto: bool = False) -> None:
        if self.inc.resolved_at:
            return
        if not await self.close_intake(f"resolved by {by}: {note}", force=not auto):
            return  # a firing alert joined at the last moment: not resolved after all
        if self.inc.resolved_at:  # a late resolved alert resolved it meanwhile
            return
        await self.launcher.cancel_waiting(f"incident resolved by {by}")
        for task_ in self.launcher.tasks.values():
            task_.cancel()
        self.inc.resolved_at = datetime.now(UTC)
        self.inc.resolved_by = by
        self.inc.resolution_note = note
        self.inc.status = IncidentStatus.RESOLVED
        self.record("resolved", f"resolved by {by}: {note}", by=by)
        await self.timeline.sync_run()
        actions = [
            f"{a['title']}: {a['detail']}" for r in self.inc.reports for a in r.get("results", [])
        ]
        await self.notifier.resolved(
            self.inc,
            root_cause=root_cause(self.inc),
            resolution=actions or [note],
            verification=[note],
        )

    # --- the loop ------------------------------------------------------------------------

    async def drain_events(self) -> None:
        while not self.launcher.events.empty():
            await self.handle(*self.launcher.events.get_nowait())

    async def tick(self) -> None:
        if self.resync:
            self.timeline.dirty = True
            await self.timeline.sync_run()
            self.resync = False
        await self.drain_events()
        done, lost = await self.launcher.poll_remote()
        for name, report in done:
            await self.finished(name, report)
        for name in lost:
            if self.config.approvals.escalate_on_timeout:
                await self.escalation.escalate(self.launcher.waiting, f"{name} approval expired")
        for message in await poll_controls(str(self.inc.flow_run_id), self.control_keys):
            await self.control(message)
        for name, result in self.launcher.finished_tasks():
            await self.finished(name, result)
        await self.after_runbooks()
        if not self.inc.resolved_at:
            await self.verify()
        if not self.inc.resolved_at:
            await self.escalation.escalate(self.launcher.waiting)
            due = self.notifier.next_update_due(self.inc)
            if due and datetime.now(UTC) >= due:
                recent = [e.text for e in self.inc.timeline[-3:]]
                await self.notifier.update(self.inc, actions=recent)
        await self.write_artifacts()

    async def write_artifacts(self, force: bool = False) -> None:
        sla = self.config.sla_for(self.inc.severity)
        await self.timeline.write_artifacts(self.launcher.runbook_lines(), sla, force=force)


def _announcement(kind: str, data: dict[str, Any]) -> tuple[str, str]:
    """What makes a plan or gate announcement unique (each approval round has its own key)."""
    return kind, f"{data['plan'].id}/{data.get('pause_key', '')}"


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())
