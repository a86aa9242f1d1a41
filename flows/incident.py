"""The incident parent flow: declare → classify → notify → run runbooks → verify → resolve.

One flow run per incident, named ``INC-<n> <severity> <title>`` and tagged with its id,
severity, service and status; the routed runbooks run as parallel subflows (or deployment
runs) with their own approval gates; the timeline, a report and the post-mortem are
artifacts. Acknowledgements, manual resolution and joining alerts arrive as flow run inputs
(``oncall-ctl-*``) written by ``oncall ack``/``resolve`` and the alert intake.

:class:`IncidentRun` decides; its parts each do one job: the record (incident_timeline),
severity and escalation (incident_escalation), the runbooks (incident_launch), alerts by
fingerprint and control inputs (incident_alerts), verification (incident_verify). An
incident the intake opened closes its registration in the intake store when it ends
(flows/spool.py): atomically with alerts joining it, so none joins a closed incident.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterTags,
)
from prefect.context import FlowRunContext

from checks.severity import DEFAULT_RULES, SeverityRule, classify
from flows.config import OncallConfig
from flows.config_load import configured_policy, find_config, load_config
from flows.incident_launch import route
from flows.incident_model import Incident
from flows.incident_outage import Outage
from flows.incident_run import IncidentRun
from flows.intake import CONTROL_PREFIX
from integrations.alerts import Alert
from runbooks.engine import live
from runbooks.engine.gate import set_policy_source
from runbooks.engine.model import RunContext

# approvals: from the oncall.yaml this process uses, never from the incident's parameters
set_policy_source(configured_policy)

__all__ = ["CONTROL_PREFIX", "IncidentRun", "incident", "route"]

TICK_S = 1.0


async def _number(start: datetime, my_tags: list[str]) -> int:
    """INC-<n>: incident runs expected to start up to this one, in order."""
    async with get_client() as client:
        count = await client.count_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=["incident"]),
                expected_start_time=FlowRunFilterExpectedStartTime(before_=start),
            )
        )
    return count + (0 if "incident" in my_tags else 1)


@flow(name="incident", log_prints=False)
async def incident(
    alert: Alert,
    config: OncallConfig | None = None,
    config_path: str | None = None,
    approve_as: str | None = None,
    requested_by: str | None = None,
    also: list[Alert] | None = None,
    intake: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Runs an incident: classify, notify, escalate, run runbooks, verify, resolve, post-mortem."""
    cfg = config or load_config(config_path or find_config())
    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        raise RuntimeError("the incident flow runs only as a Prefect flow run")
    run = ctx.flow_run
    if run.deployment_id:
        # Parameters of a deployment run come from whoever reached the Prefect API: a
        # requester named there is not verified (approve_as is refused by the gates).
        requested_by = None
    my_tags = list(run.tags or [])
    number = await _number(run.expected_start_time or datetime.now(UTC), my_tags)
    rules = [SeverityRule.model_validate(r) for r in cfg.severity_rules]
    verdict = classify(alert, rules=[*DEFAULT_RULES, *rules])
    inc = Incident(
        id=f"INC-{number}",
        title=alert.title,
        service=alert.service,
        severity=verdict.severity,
        severity_reasons=verdict.reasons,
        fingerprint=alert.fingerprint,
        flow_run_id=str(run.id),
    )
    # Keep tags like "drill"; the incident's own tags are rewritten by sync_run.
    own = ("fp:", "service:", "severity:", "status:", "INC-")
    extra = [
        t for t in my_tags if t not in ("oncall", "incident", "acked") and not t.startswith(own)
    ]
    state = IncidentRun(
        cfg,
        alert,
        inc,
        approve_as=approve_as,
        requested_by=requested_by,
        extra_tags=extra,
        intake=intake,
    )
    state.book.add(alert, (intake or {}).get("alert_id"))
    await state.timeline.sync_run()
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
        await state.on_alert(other, None)
    state.launcher.remote = bool(run.deployment_id)
    live.subscribe(state.launcher.on_live)
    outage = Outage(state.logger, on_away=lambda: setattr(state, "resync", True))
    ended = "the incident run stopped"
    try:
        context = RunContext(incident_id=inc.id, severity=inc.severity, requested_by=requested_by)
        await state.launcher.start(alert, context)
        await declared
        while not inc.resolved_at:
            await outage.attempt(state.tick)
            await state.launcher.nap(TICK_S)
        await asyncio.sleep(0)  # let cancelled runbooks settle
        for task_ in list(state.launcher.tasks.values()):
            with contextlib.suppress(BaseException):
                await task_
        await state.drain_events()
    except BaseException as exc:
        ended = f"the incident run stopped ({type(exc).__name__})"
        raise
    finally:
        live.unsubscribe(state.launcher.on_live)
        # Stopped from outside (oncall serve shutting down): no runbook subflow outlives its
        # incident, and its registration closes (alerts it never saw open a new incident).
        await state.launcher.stop()
        if not inc.resolved_at:
            with contextlib.suppress(Exception):
                await asyncio.shield(state.close_intake(ended, force=True))

    async def final() -> None:
        if state.resync:
            await state.timeline.sync_run()
            state.resync = False
        await state.write_artifacts(force=True)

    while not await outage.attempt(final):
        await asyncio.sleep(TICK_S)
    return inc.model_dump(mode="json")
