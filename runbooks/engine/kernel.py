"""The life of every runbook run: diagnose → plan → gate → act → verify → report.

:func:`execute` is the body of every runbook flow (:func:`flow_of`); it drives
one :class:`RunbookRun`, which keeps the bookkeeping (timings, events, the report
artifact) so a runbook module only declares what is its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE, CacheKeyFnPolicy
from prefect.context import FlowRunContext
from pydantic import BaseModel

from checks.findings import Finding, Severity, Status, timed
from checks.severity import suggested_severity
from integrations.errors import ApprovalRequired, ConfigError
from integrations.service import Service
from runbooks.engine import live
from runbooks.engine.gate import decide, emit_run_event
from runbooks.engine.guard import approved_scope, trusted_context
from runbooks.engine.model import (
    Action,
    ActionResult,
    Approval,
    Outcome,
    Plan,
    RunbookReport,
    RunContext,
)
from runbooks.engine.report import report_markdown
from runbooks.engine.runbook import Check, Moment, NoUndo, Phase, Remedy, Runbook
from runbooks.engine.verify import Judgement, Sample, Verdict, healthy, recovered

__all__ = [
    "RunbookRun",
    "execute",
    "flow_of",
    "resolve_service",
    "run_name",
    "set_service_resolver",
    "suspendable",
]


_resolver: Callable[[str], Service] | None = None


def set_service_resolver(resolver: Callable[[str], Service] | None) -> None:
    """Lets runbook flows take a service *name* (deployments, the UI): flows/ installs this."""
    global _resolver
    _resolver = resolver


def resolve_service(service: Service | str) -> Service:
    """The Service itself, or the configured service of that name (flows/ installs how)."""
    if isinstance(service, Service):
        return service
    if _resolver is None:
        raise ConfigError(
            f"service {service!r} given by name, but nothing resolves names here: run the"
            " runbook through `oncall` or a deployment of flows.runbook_flows"
        )
    return _resolver(service)


def run_name(runbook: str) -> Callable[[], str]:
    """A flow run name ``<runbook> · <service>`` whether the service came as a model or a name."""

    def name() -> str:
        from prefect.runtime import flow_run

        service = flow_run.parameters.get("service")
        if isinstance(service, dict):
            service = service.get("name")
        return f"{runbook} · {getattr(service, 'name', service) or '?'}"

    return name


def suspendable() -> bool:
    """A top-level deployment run can suspend (free its worker) while a person decides."""
    ctx = FlowRunContext.get()
    run = ctx.flow_run if ctx else None
    return bool(run and run.deployment_id and not run.parent_task_run_id)


def _persisted(task_: Any, key: str) -> Any:
    """The task, cached under ``key`` with its result persisted (suspend re-runs the flow)."""
    return task_.with_options(
        cache_policy=CacheKeyFnPolicy(cache_key_fn=lambda *_: key), persist_result=True
    )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "target"


def _run_id() -> str | None:
    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else None


_emit = emit_run_event


def _announce(kind: str, finding: Finding, runbook: str, run_id: str | None) -> None:
    live.publish(kind, {"finding": finding, "runbook": runbook, "flow_run_id": run_id})
    _emit(
        f"oncall.{kind}.{finding.status}",
        f"oncall.check.{runbook}.{finding.check}",
        f"{finding.check} on {finding.target}",
        finding.model_dump(mode="json"),
    )


@task(name="diagnose", cache_policy=NO_CACHE)
async def _run_checks(
    runbook: str, target: str, kind: str, checks: Mapping[str, Check]
) -> list[Finding]:
    run_id = _run_id()

    async def one(name: str, call: Check) -> list[Finding]:
        findings = await timed(name, target, call)
        for finding in findings:
            _announce(kind, finding, runbook, run_id)
        return findings

    batches = await asyncio.gather(*(one(name, call) for name, call in checks.items()))
    return [finding for batch in batches for finding in batch]


@task(name="act", cache_policy=NO_CACHE)
async def _act(action: Action, remedy: Remedy, service: Service) -> ActionResult:
    return await remedy.run(action, service=service)


class RunbookRun:
    """Collects one run's report while its runbook flow moves through the phases."""

    def __init__(
        self,
        runbook: str,
        target: str,
        params: BaseModel,
        *,
        dry_run: bool = False,
        approve_as: str | None = None,
        context: RunContext | None = None,
    ) -> None:
        self.runbook = runbook
        self.target = target
        self.params = params
        self.dry_run = dry_run
        self.approve_as = approve_as
        # Incident, severity and requester count only when oncall sealed them for this run.
        self.context, refused = trusted_context(context, runbook=runbook, target=target)
        self.refusals = [refused] if refused else []
        self.suspend = suspendable()
        self.logger = get_run_logger()
        self.report = RunbookReport(
            runbook=runbook,
            target=target,
            params=params.model_dump(mode="json"),
            flow_run_id=_run_id(),
        )
        self._t0 = time.perf_counter()
        self._approval: Approval | None = None
        live.publish(
            "start",
            {
                "runbook": runbook,
                "target": target,
                "flow_run_id": self.report.flow_run_id,
                "incident_id": self.context.incident_id,
            },
        )

    def mark(self, name: str) -> None:
        """Records seconds since the start for a milestone (first time only)."""
        self.report.timings.setdefault(name, round(time.perf_counter() - self._t0, 3))

    def note(self, text: str) -> None:
        self.report.notes.append(text)
        self.logger.info(text)

    async def diagnose(self, checks: Mapping[str, Check]) -> list[Finding]:
        """Runs the read-only checks in parallel; each finding is announced as it arrives."""
        run_checks = _run_checks
        if self.suspend:  # on resume the flow re-runs from the top: reuse the first diagnosis
            run_checks = _persisted(_run_checks, f"{self.report.flow_run_id}-diagnose")
        findings = await run_checks(self.runbook, self.target, "finding", checks)
        if findings:
            self.mark("first_finding")
        self.mark("diagnosis")
        self.report.findings.extend(findings)
        self.report.severity = suggested_severity(self.report.findings)
        return findings

    async def gate(self, plan: Plan) -> Approval | None:
        """Passes the plan through the approval gate; returns the approval, or None."""
        if self.report.flow_run_id:
            # The same run always proposes the same plan id: a re-run after suspend finds
            # its gate (keyed by plan id) already answered instead of asking again.
            digest = hashlib.sha256(f"{self.report.flow_run_id}/{self.runbook}".encode())
            plan = plan.model_copy(update={"id": digest.hexdigest()[:12]})
        self.report.plan = plan
        self.mark("plan")
        live.publish("plan", {"plan": plan, "runbook": self.runbook, "flow_run_id": _run_id()})
        _emit(
            "oncall.plan.proposed",
            f"oncall.plan.{plan.id}",
            plan.summary,
            plan.model_dump(mode="json"),
        )
        if not plan.actions:
            return None
        if self.dry_run:
            self.note("dry run: stopped before the approval gate; nothing was changed")
            return None
        decisions = await decide(
            self.runbook,
            self.report.findings,
            plan,
            severity=self.context.severity or self.report.severity,
            requested_by=self.context.requested_by,
            approve_as=self.approve_as,
            timeout_s=getattr(self.params, "approval_timeout_seconds", 900),
            suspend=self.suspend,
            incident_id=self.context.incident_id,
            refusals=self.refusals,
        )
        self.mark("decision")
        self.report.approvals.extend(decisions)
        approval = decisions[-1]
        self._approval = approval
        return approval if approval.approved else None

    async def act(
        self, plan: Plan, approval: Approval, remedies: Mapping[Any, Remedy], service: Service
    ) -> list[ActionResult]:
        """Executes each approved action with its remediation; refuses anything unguarded."""
        results = []
        with approved_scope(approval, plan):
            for action in plan.actions:
                remedy = remedies.get(action.kind)
                if remedy is None or not getattr(remedy.run, "__oncall_remediation__", False):
                    raise ApprovalRequired(f"{action.kind} has no guarded remediation")
                result = await _act.with_options(name=f"act-{action.id}")(action, remedy, service)
                results.append(result)
                self.report.results.append(result)
                live.publish("result", {"result": result, "flow_run_id": _run_id()})
                _emit(
                    f"oncall.action.{result.status}",
                    f"oncall.action.{plan.id}.{action.id}",
                    action.title,
                    result.model_dump(mode="json"),
                )
                if result.status in ("done", "partial") and remedy.reversible and action.undo:
                    self.note(f"undo {action.title[:1].lower()}{action.title[1:]}: {action.undo}")
        self.mark("mitigation")
        return results

    async def verify(
        self, runbook: Runbook[Any], service: Service, params: Any, moment: Moment
    ) -> Judgement:
        """Samples the checks until healthy, then for the hold window; the runbook judges."""
        timeout = float(getattr(params, "verify_timeout_seconds", 15.0))
        hold = float(getattr(params, "verify_hold_seconds", 0.0))
        samples: list[Sample] = []
        t0 = time.monotonic()
        first_ok: float | None = None
        self._waiting(f"{self.runbook} to verify its fix", timeout)
        async with runbook.checks(service, params, moment) as checks:
            while True:
                findings = await _run_checks(self.runbook, self.target, "verification", checks)
                now = time.monotonic() - t0
                samples.append(Sample(at_s=round(now, 3), findings=findings))
                ok = recovered(findings)
                if ok and first_ok is None:
                    first_ok = now
                    self.mark("verified")
                # Each sample, for whoever follows the verification (a terminal, a test).
                live.publish(
                    "verifying",
                    {
                        "runbook": self.runbook,
                        "flow_run_id": self.report.flow_run_id,
                        "healthy": ok,
                        "elapsed_s": now,
                    },
                )
                if ok and now == first_ok:  # recovered: now the fix must hold
                    self._waiting(f"{self.runbook}'s fix to hold for {hold:.0f}s", hold)
                if first_ok is None and now >= timeout:
                    break
                if first_ok is not None and (not ok or now - first_ok >= hold):
                    break  # a relapse is judged now; a held fix is done
                await asyncio.sleep(1.0)
        live.publish("wait", {"key": f"verify {self.report.flow_run_id}", "done": True})
        judgement = runbook.verify.judge(samples, params)
        self.report.verification = samples[-1].findings
        self.report.judgement = judgement
        if judgement.verdict is not Verdict.FIXED:
            self.note(f"{judgement.verdict.value.replace('_', ' ')}: {judgement.reason}")
            if judgement.next_step:
                self.note(f"next step: {judgement.next_step}")
        return judgement

    def _waiting(self, what: str, seconds: float) -> None:
        """Tells a terminal what the run waits for and until when (one live line)."""
        live.publish("wait", {"key": f"verify {self.report.flow_run_id}", "done": True})
        live.publish(
            "wait",
            {
                "key": f"verify {self.report.flow_run_id}",
                "what": what,
                "until": datetime.now(UTC) + timedelta(seconds=seconds),
                "flow_run_id": self.report.flow_run_id,
            },
        )

    def _outcome(self) -> Outcome:
        findings = self.report.findings
        observed = [f for f in findings if f.status not in (Status.ERROR, Status.UNKNOWN)]
        if findings and not observed and any(f.status is Status.ERROR for f in findings):
            # Nothing could be observed at all: calling that "healthy" would be a lie.
            return Outcome.UNREACHABLE
        if healthy(findings):
            return Outcome.HEALTHY
        if self.dry_run:
            return Outcome.DRY_RUN
        if self.report.plan is None or not self.report.plan.actions:
            return Outcome.PROBLEM_REMAINS
        if self._approval is None or not self._approval.approved:
            if self._approval is not None and self._approval.channel == "timeout":
                return Outcome.TIMED_OUT
            return Outcome.REJECTED
        judgement = self.report.judgement
        if judgement is not None and judgement.verdict is Verdict.FIXED:
            return Outcome.FIXED
        if judgement is not None and judgement.verdict is Verdict.MITIGATED:
            return Outcome.MITIGATED
        return Outcome.PROBLEM_REMAINS

    async def finish(self, severity: Severity | None = None) -> RunbookReport:
        """Decides the outcome, writes the report artifact and returns the report."""
        report = self.report
        report.outcome = self._outcome()
        report.severity = severity or report.severity
        report.finished_at = datetime.now(UTC)
        await acreate_markdown_artifact(
            markdown=report_markdown(report),
            key=f"{_slug(self.runbook)}-{_slug(self.target)}",
            description=f"{self.runbook} on {self.target}: {report.outcome}",
        )
        live.publish("report", {"report": report, "flow_run_id": report.flow_run_id})
        _emit(
            f"oncall.runbook.{report.outcome}",
            f"oncall.runbook.{self.runbook}",
            f"{self.runbook} on {self.target}",
            report.model_dump(mode="json"),
        )
        self.logger.info("%s on %s: %s", self.runbook, self.target, report.outcome)
        return report


def _undo_stated(runbook: Runbook[Any], plan: Plan) -> Plan:
    """Every action tells the approver how to undo it: its own words, or its remedy's."""
    actions = []
    for action in plan.actions:
        remedy = runbook.remedy(action)
        if action.undo is None and remedy is not None and isinstance(remedy.undo, NoUndo):
            action = action.model_copy(update={"undo": remedy.undo.reason})
        actions.append(action)
    return plan.model_copy(update={"actions": actions})


async def execute(
    runbook: Runbook[Any],
    service: Service | str,
    params: Any = None,
    *,
    dry_run: bool = False,
    approve_as: str | None = None,
    context: RunContext | None = None,
) -> RunbookReport:
    """One runbook run, whatever the runbook: the body of every runbook flow."""
    service = resolve_service(service)
    if params is None:
        params = runbook.params()
    elif not isinstance(params, runbook.params):
        params = runbook.params.model_validate(
            params.model_dump() if isinstance(params, BaseModel) else params
        )
    runbook.targets.require(runbook.name, service)
    run = RunbookRun(
        runbook.name, service.name, params, dry_run=dry_run, approve_as=approve_as, context=context
    )
    async with runbook.checks(service, params, Moment(phase=Phase.DIAGNOSE)) as checks:
        findings = await run.diagnose(checks)
    plan = _undo_stated(runbook, runbook.plan(service, findings, params))
    if runbook.notes is not None:
        for text in runbook.notes(service, findings, plan, params):
            run.note(text)
    approval = await run.gate(plan)
    if approval:
        since = time.time()
        await run.act(plan, approval, runbook.executors, service)
        await run.verify(
            runbook, service, params, Moment(phase=Phase.VERIFY, since=since, plan=plan)
        )
    return await run.finish()


_flows: dict[str, Any] = {}


def flow_of(runbook: Runbook[Any]) -> Any:
    """The Prefect flow that runs this runbook through :func:`execute` (one per process)."""
    if runbook.name in _flows:
        return _flows[runbook.name]

    async def run(
        service: str | Service,
        params: Any = None,
        dry_run: bool = False,
        approve_as: str | None = None,
        context: RunContext | None = None,
    ) -> RunbookReport:
        return await execute(
            runbook,
            service,
            params,
            dry_run=dry_run,
            approve_as=approve_as,
            context=context,
        )

    # Concrete annotations, so Prefect's parameter schema (the UI form) and its
    # validation know this runbook's params model.
    annotations = {
        "service": str | Service,
        "params": runbook.params | None,
        "dry_run": bool,
        "approve_as": str | None,
        "context": RunContext | None,
    }
    run.__annotations__ = {**annotations, "return": RunbookReport}
    run.__signature__ = inspect.Signature(  # type: ignore[attr-defined]  # inspect reads it; typeshed lacks it
        [
            inspect.Parameter(
                name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                annotation=annotation,
                default=param.default,
            )
            for (name, annotation), param in zip(
                annotations.items(),
                inspect.signature(run).parameters.values(),
                strict=True,
            )
        ],
        return_annotation=RunbookReport,
    )
    run.__name__ = run.__qualname__ = runbook.entry
    run.__doc__ = runbook.summary
    built = flow(
        name=runbook.name,
        flow_run_name=run_name(runbook.name),
        description=runbook.summary,
        log_prints=False,
    )(run)
    _flows[runbook.name] = built
    return built
