"""Telling people: Slack, PagerDuty Events v2 and Statuspage, with the seeds' templates.

A failing channel is retried with backoff by its client and then logged on the
incident's timeline; it never fails the incident.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from flows.config import EscalationLevel, Notifications
from flows.incident_model import Incident, IncidentStatus
from integrations import slack
from integrations.errors import OncallError
from integrations.pagerduty import PagerDutyEvents, PagerDutyTarget
from integrations.slack import SlackWebhook
from integrations.statuspage import StatuspageManage

__all__ = ["Notifier"]

log = logging.getLogger("oncall.notify")
Report = Callable[[str, str, bool], None]  # (channel, sentence, ok)


def _minutes(seconds: float | None) -> str:
    return f"{seconds / 60:.0f} minutes" if seconds else "regular intervals"


class Notifier:
    """Sends one incident's messages; ``report`` hears every success and failure."""

    def __init__(
        self,
        config: Notifications,
        *,
        report: Report,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.report = report
        self.transport = transport
        self.statuspage_incident: str | None = None
        self.last_update: datetime | None = None

    def _retrying(self, target: Any) -> Any:
        return target.model_copy(update={"retries": self.config.retries})

    async def _send(self, channel: str, call: Callable[[], Awaitable[str]]) -> bool:
        try:
            sentence = await call()
        except OncallError as exc:
            log.warning("%s notification failed: %s", channel, exc)
            self.report(channel, f"{channel} failed after retries: {exc}", False)
            return False
        self.report(channel, sentence, True)
        return True

    async def _slack(self, message: dict[str, Any]) -> bool:
        if self.config.slack is None:
            return False

        async def post() -> str:
            target = self._retrying(self.config.slack)
            async with SlackWebhook(target, transport=self.transport) as client:
                return await client.post(message)

        return await self._send("slack", post)

    async def _pagerduty(
        self,
        action: str,
        incident: Incident,
        routing: Any = None,
        summary: str | None = None,
        suffix: str = "",
    ) -> bool:
        target = self.config.pagerduty
        if routing is not None:
            target = PagerDutyTarget(name="escalation", routing_key=routing)
        if target is None:
            return False
        dedup = f"oncall-{incident.id}{suffix}"

        async def send() -> str:
            async with PagerDutyEvents(self._retrying(target), transport=self.transport) as pd:
                if action == "trigger":
                    return await pd.trigger(
                        dedup,
                        summary or f"{incident.id} {incident.title}",
                        incident.service,
                        str(incident.severity),
                        custom_details={
                            "incident": incident.id,
                            "status": str(incident.status),
                            "reasons": incident.severity_reasons,
                        },
                        component=incident.service,
                        group="oncall-runbooks",
                    )
                if action == "acknowledge":
                    return await pd.acknowledge(dedup)
                return await pd.resolve(dedup)

        return await self._send("pagerduty", send)

    async def _statuspage(self, status: IncidentStatus, body: str, incident: Incident) -> bool:
        if self.config.statuspage is None or str(incident.severity) not in ("P0", "P1"):
            return False  # seed 002: the status page is updated for P0 and P1

        async def send() -> str:
            async with StatuspageManage(
                self._retrying(self.config.statuspage), transport=self.transport
            ) as page:
                if self.statuspage_incident is None:
                    created, sentence = await page.create_incident(
                        f"[{incident.id}] {incident.title}",
                        str(status),
                        body,
                        component_ids=self.config.statuspage_components or None,
                    )
                    self.statuspage_incident = created.id
                    if status is IncidentStatus.INVESTIGATING:
                        return sentence
                if status is IncidentStatus.RESOLVED:
                    return await page.resolve_incident(self.statuspage_incident, body)
                return await page.update_incident(self.statuspage_incident, str(status), body)

        return await self._send("statuspage", send)

    def next_update_due(self, incident: Incident) -> datetime | None:
        every = self.config.update_every.get(incident.severity)
        if not every:
            return None
        return (self.last_update or incident.opened_at) + timedelta(seconds=every)

    async def declared(
        self, incident: Incident, *, impact: list[str], next_steps: list[str], link: str | None
    ) -> None:
        self.last_update = datetime.now(UTC)
        every = self.config.update_every.get(incident.severity)
        # The channels at once: a slow or failing one (retried with back-off) must not
        # hold up the page or the status page.
        await asyncio.gather(
            self._declared_in_slack(incident, impact, next_steps, link),
            self._pagerduty("trigger", incident),
            self._statuspage(
                IncidentStatus.INVESTIGATING,
                f"We are aware of an issue affecting {incident.service}. We are investigating"
                f" and will provide updates every {_minutes(every)}.",
                incident,
            ),
        )

    async def _declared_in_slack(
        self, incident: Incident, impact: list[str], next_steps: list[str], link: str | None
    ) -> None:
        await self._slack(
            slack.incident_declared(
                incident.id,
                str(incident.severity),
                incident.service,
                incident.title,
                started_at=incident.opened_at,
                impact=impact,
                next_steps=next_steps,
                next_update=self.next_update_due(incident),
                links={"Prefect run": link} if link else None,
            )
        )

    async def update(
        self,
        incident: Incident,
        *,
        actions: list[str],
        impact: str | None = None,
        statuspage_body: str | None = None,
        link: str | None = None,
    ) -> None:
        self.last_update = datetime.now(UTC)
        await self._slack(
            slack.incident_update(
                incident.id,
                str(incident.status),
                severity=str(incident.severity),
                service=incident.service,
                at=self.last_update,
                elapsed=timedelta(seconds=incident.elapsed()),
                actions=actions,
                impact=impact,
                next_update=self.next_update_due(incident),
                links={"Prefect run": link} if link else None,
            )
        )
        if statuspage_body:
            await self._statuspage(incident.status, statuspage_body, incident)

    async def acknowledged(self, incident: Incident) -> None:
        await self._pagerduty("acknowledge", incident)
        await self._slack(
            {
                "text": f"{incident.acked_by} acknowledged {incident.id} at"
                f" {incident.acked_at:%H:%M} UTC. Investigating now..."
            }
        )

    async def escalate(self, incident: Incident, level: EscalationLevel, why: str) -> None:
        mention = f"{level.slack} " if level.slack else ""
        await self._slack(
            {
                "text": f"{mention}Escalating {incident.id} ({incident.severity},"
                f" {incident.title}) to {level.name}: {why}"
            }
        )
        if level.pagerduty is not None:
            await self._pagerduty(
                "trigger",
                incident,
                routing=level.pagerduty,
                summary=f"{incident.id} escalated to {level.name}: {why}",
                suffix=f"-{level.name.lower().replace(' ', '-')}",
            )

    async def approval_needed(self, incident: Incident, gate: dict[str, Any]) -> None:
        plan = gate.get("plan")
        await self._slack(
            slack.approval_request(
                str(gate.get("flow_run_id")),
                runbook=str(gate.get("runbook")),
                action=str(gate.get("summary")),
                risk=str(gate.get("risk")),
                severity=str(incident.severity),
                incident_id=incident.id,
                preview=[a.preview for a in plan.actions] if plan is not None else [],
                expires_at=gate.get("timeout_at"),
            )
        )

    async def resolved(
        self, incident: Incident, *, root_cause: str, resolution: list[str], verification: list[str]
    ) -> None:
        duration = timedelta(seconds=incident.elapsed())
        await self._slack(
            slack.incident_resolved(
                incident.id,
                severity=str(incident.severity),
                resolved_at=incident.resolved_at,
                duration=duration,
                root_cause=root_cause,
                resolution=resolution,
                verification=verification,
                postmortem=f"oncall postmortem {incident.id}",
            )
        )
        await self._pagerduty("resolve", incident)
        minutes = duration.total_seconds() / 60
        await self._statuspage(
            IncidentStatus.RESOLVED,
            f"Issue has been resolved. All systems operational. Cause: {root_cause}. Timeline:"
            f" issue from {incident.opened_at:%H:%M} to {incident.resolved_at:%H:%M} UTC"
            f" ({minutes:.0f} minutes).",
            incident,
        )
