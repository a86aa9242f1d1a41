"""An incident's record: the timeline (events, log, live view), its flow run's name and tags,
and the timeline, report and post-mortem artifacts."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

from prefect.artifacts import acreate_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.events import emit_event

from flows.config import Sla
from flows.incident_model import Incident, incident_labels, incident_tags
from flows.postmortem import postmortem_markdown
from runbooks.engine import live

__all__ = ["Timeline"]

# Artifacts are rewritten at most this often, and only those whose text changed: each write
# is a row, and during an alert storm 20 incidents rewriting three every 2 s were the
# Prefect server's heaviest load (850 writes a minute, 110 ms each).
ARTIFACT_EVERY_S = 5.0


class Timeline:
    """Writes what happens to one incident where people and tools look for it."""

    def __init__(
        self,
        incident: Incident,
        extra_tags: list[str],
        logger: Any,
        sla_for: Callable[[Any], Sla],
    ) -> None:
        self.inc = incident
        self.sla_for = sla_for
        self.extra_tags = extra_tags
        self.logger = logger
        self.dirty = True
        self._written = 0.0
        self._texts: dict[str, str] = {}  # artifact key -> the text last written

    def record(self, kind: str, text: str, **data: Any) -> None:
        """One timeline entry: in the incident, the live view, the log and a Prefect event."""
        entry = self.inc.add(kind, text, **data)
        self.dirty = True
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

    async def sync_run(self) -> None:
        """Puts the incident's state in its flow run's name, tags and labels."""
        async with get_client() as client:
            run_id = UUID(str(self.inc.flow_run_id))
            await client.update_flow_run(
                run_id,
                name=self.inc.run_name,
                tags=[*incident_tags(self.inc), *self.extra_tags],
            )
            # What `oncall incidents` needs to judge the SLA as the post-mortem does.
            labels: dict[str, bool | int | float | str] = dict(
                incident_labels(self.inc, self.sla_for(self.inc.severity))
            )
            await client.update_flow_run_labels(run_id, labels)

    async def write_artifacts(
        self, runbook_lines: list[str], sla: Sla, force: bool = False
    ) -> None:
        if not force and (not self.dirty or time.monotonic() - self._written < ARTIFACT_EVERY_S):
            return
        self.dirty = False
        self._written = time.monotonic()
        inc = self.inc
        key = inc.id.lower()
        lines = [f"# {inc.id} timeline", "", "| time (UTC) | event |", "|---|---|"]
        lines += [f"| {e.at:%H:%M:%S} | {e.text.replace('|', '/')} |" for e in inc.timeline]
        for suffix, text, description in (
            ("timeline", "\n".join(lines), f"{inc.id} timeline"),
            ("report", self.report_markdown(runbook_lines), f"{inc.id} {inc.status}"),
            ("postmortem", postmortem_markdown(inc, sla), f"{inc.id} post-mortem draft"),
        ):
            if self._texts.get(suffix) == (text + description):
                continue
            await acreate_markdown_artifact(text, key=f"{key}-{suffix}", description=description)
            self._texts[suffix] = text + description

    def report_markdown(self, runbook_lines: list[str]) -> str:
        inc = self.inc
        out = [
            f"# {inc.id} {inc.severity} {inc.title}",
            "",
            f"- Status: **{inc.status}**",
            f"- Service: {inc.service}",
            f"- Severity: {inc.severity} — {'; '.join(inc.severity_reasons)}",
            f"- Opened: {inc.opened_at:%Y-%m-%d %H:%M:%S} UTC",
            f"- Acknowledged: {inc.acked_by or 'not yet'}",
            f"- Alerts: {inc.alerts} ({_alert_states(inc)})",
            "",
            "## Runbooks",
            "",
        ]
        for report in inc.reports:
            out.append(
                f"- {report['runbook']}: {report['outcome']}"
                f" ({len(report.get('results', []))} action(s))"
            )
        out += runbook_lines
        out += [f"- {s['runbook']}: not started ({s['reason']})" for s in inc.skipped]
        return "\n".join(out)


def _alert_states(inc: Incident) -> str:
    firing = sum(1 for a in inc.alert_states.values() if a["status"] == "firing")
    return f"{len(inc.alert_states)} fingerprint(s), {firing} firing"


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(data, default=str))
