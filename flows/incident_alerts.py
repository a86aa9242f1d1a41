"""The alerts of one incident, by fingerprint, and the control inputs that bring more.

An incident holds every fingerprint that joined it with its last word: firing or resolved.
A ``resolved`` alert marks only its own fingerprint. Sources that report resolution
(Alertmanager, Sentry, PagerDuty) keep the incident from resolving by itself while one of
their fingerprints fires; alerts from people, health checks and generic senders, which
never say "resolved", do not.

Joined alerts, acknowledgements and resolutions reach the incident as flow run inputs
(``oncall-ctl-*``); alerts joined together during a storm share one input. Each joined
alert carries its intake id, so a re-sent input, an alert grouped differently after a
receiver crash, and an alert read at closing time (flows/spool.py ``close_incident``)
count once.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from prefect.client.orchestration import get_client

from flows.incident_model import Incident
from flows.intake import CONTROL_PREFIX
from integrations.alerts import Alert

__all__ = ["RESOLVING_SOURCES", "AlertBook", "Change", "joined_items", "poll_controls"]

RESOLVING_SOURCES = frozenset({"alertmanager", "sentry", "pagerduty"})
Change = Literal["new", "repeat", "resolved", "refired", "stale-resolve", "seen"]


class AlertBook:
    """Fingerprint → firing/resolved for one incident (kept in ``Incident.alert_states``)."""

    def __init__(self, incident: Incident) -> None:
        self.inc = incident
        self.seen: set[str] = set()  # intake ids already counted

    def add(self, alert: Alert, intake_id: str | None = None) -> Change:
        """Records one alert; says what it changed."""
        if intake_id:
            if intake_id in self.seen:
                return "seen"
            self.seen.add(intake_id)
        self.inc.alerts += 1
        before = self.inc.alert_states.get(alert.fingerprint)
        self.inc.alert_states[alert.fingerprint] = {
            "status": alert.status,
            "source": alert.source,
            "title": alert.title,
            "at": datetime.now(UTC).isoformat(),
        }
        if alert.status == "resolved":
            return "resolved" if before and before["status"] == "firing" else "stale-resolve"
        if before is None:
            return "new"
        return "refired" if before["status"] == "resolved" else "repeat"

    def firing(self) -> list[str]:
        """Titles of the fingerprints still firing whose source will say when they resolve."""
        return [
            state["title"]
            for state in self.inc.alert_states.values()
            if state["status"] == "firing" and state["source"] in RESOLVING_SOURCES
        ]

    def any_resolved(self) -> bool:
        return any(s["status"] == "resolved" for s in self.inc.alert_states.values())


def joined_items(message: dict[str, Any]) -> list[Any]:
    """The joined alerts a control message carries, each ``{"id": intake id, "alert": {...}}``:
    one (``kind: alert``) or several the intake joined together (``kind: alerts``)."""
    if message.get("kind") == "alert":
        return [message]
    if message.get("kind") == "alerts" and isinstance(message.get("alerts"), list):
        return list(message["alerts"])
    return []


async def poll_controls(run_id: str, seen: set[str]) -> list[dict[str, Any]]:
    """New control messages for this incident run, oldest first (their keys go into seen)."""
    async with get_client() as client:
        inputs = await client.filter_flow_run_input(
            UUID(run_id), CONTROL_PREFIX, limit=200, exclude_keys=seen
        )
    messages = []
    for item in sorted(inputs, key=lambda i: i.created or datetime.min.replace(tzinfo=UTC)):
        seen.add(item.key)
        try:
            message = json.loads(item.value)
        except ValueError:
            continue
        if isinstance(message, dict):
            messages.append(message)
    return messages
