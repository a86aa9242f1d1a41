"""An incident's severity and escalation: raised by alerts and findings, never lowered; the
seed chains (Part C step 3) fire while nobody acknowledges or an approval waits."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from checks.findings import Severity
from flows.config import OncallConfig
from flows.incident_model import Incident
from flows.incident_timeline import Timeline
from flows.notify import Notifier

__all__ = ["Escalation"]


class Escalation:
    """Severity changes and escalation levels of one incident."""

    def __init__(
        self, config: OncallConfig, incident: Incident, timeline: Timeline, notifier: Notifier
    ) -> None:
        self.config = config
        self.inc = incident
        self.timeline = timeline
        self.notifier = notifier

    async def raise_severity(self, severity: Severity | None, reason: str) -> None:
        if severity is None or not severity.more_severe_than(self.inc.severity):
            return
        before = self.inc.severity
        self.inc.severity = severity
        self.inc.severity_reasons.append(reason)
        self.timeline.record("severity", f"severity raised {before} → {severity}: {reason}")
        await self.timeline.sync_run()
        await self.notifier.update(self.inc, actions=[f"severity raised to {severity}: {reason}"])

    def clock(
        self, waiting: dict[str, dict[str, Any]], now: datetime | None = None
    ) -> float | None:
        """Seconds the escalation timer has been running, or None when it is stopped."""
        now = now or datetime.now(UTC)
        if not self.inc.acked_at:
            return (now - self.inc.opened_at).total_seconds()
        if waiting:
            oldest = min(datetime.fromisoformat(g["waiting_since"]) for g in waiting.values())
            return (now - oldest).total_seconds()
        return None

    async def escalate(
        self, waiting: dict[str, dict[str, Any]], force_reason: str | None = None
    ) -> None:
        """Goes one level up the chain when its time has come (or at once, with a reason)."""
        chain = self.config.escalation.get(self.inc.severity) or []
        done = len(self.inc.escalated_to) + 1  # level 0 was told when the incident opened
        if done >= len(chain):
            return
        clock = self.clock(waiting)
        level = chain[done]
        if force_reason is None and (clock is None or clock < level.after):
            return
        why = force_reason or (
            f"unacknowledged for {clock:.0f}s"
            if not self.inc.acked_at
            else f"approval waiting for {clock:.0f}s"
        )
        self.inc.escalated_to.append(level.name)
        self.timeline.record("escalate", f"escalated to {level.name}: {why}", level=level.name)
        await self.notifier.escalate(self.inc, level, why)
