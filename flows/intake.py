"""Alert intake shared by the CLI and the webhook receiver: join an open incident or open one.

An alert joins the open incident with the same fingerprint, or else the open
incident of the same service (so a storm opens one incident); a ``resolved``
alert with no open incident is recorded as ignored. Opening is done by the
caller (in this process, or as a deployment run).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic import BaseModel

from flows.incident_model import fingerprint_tag
from flows.prefect_api import PrefectAPI
from integrations.alerts import Alert

__all__ = [
    "CONTROL_PREFIX",
    "Submission",
    "creation_tags",
    "find_open",
    "group",
    "open_by_deployment",
    "send_control",
    "submit",
]

CONTROL_PREFIX = "oncall-ctl-"


def creation_tags(alert: Alert) -> list[str]:
    """Tags an incident run carries from the moment it is created (dedup looks for them)."""
    return ["oncall", "incident", fingerprint_tag(alert.fingerprint), f"service:{alert.service}"]


def find_open(api: PrefectAPI, alert: Alert) -> dict[str, Any] | None:
    """The open incident this alert belongs to: same fingerprint first, then same service."""
    for tag in (fingerprint_tag(alert.fingerprint), f"service:{alert.service}"):
        runs = api.incident_runs([tag], open_only=True, limit=5)
        if runs:
            return runs[-1]  # the oldest open one
    return None


def send_control(api: PrefectAPI, run_id: str, message: dict[str, Any]) -> None:
    api.send_input(run_id, f"{CONTROL_PREFIX}{uuid.uuid4().hex}", message)


def group(alerts: list[Alert]) -> list[list[Alert]]:
    """Alerts of one payload, grouped per service (each group is one incident)."""
    groups: dict[str, list[Alert]] = {}
    for alert in alerts:
        groups.setdefault(alert.service, []).append(alert)
    return list(groups.values())


class Submission(BaseModel):
    """What the intake did with one alert."""

    action: Literal["joined", "opened", "ignored"]
    incident_run_id: str | None = None
    reason: str = ""


Opener = Callable[[Alert], Awaitable[str]]
_locks: dict[str, asyncio.Lock] = {}


async def open_by_deployment(alert: Alert, config_path: str | None = None) -> str:
    """Starts the ``incident`` deployment for this alert; the fingerprint de-duplicates."""
    from prefect.deployments import run_deployment

    # One firing episode, one run: Alertmanager repeats startsAt for the same episode; an
    # alert without one is its own episode (a re-fire after resolution must open anew).
    episode = alert.starts_at or alert.received_at
    key = f"{alert.fingerprint}-{episode.isoformat()}"
    run = await run_deployment(
        "incident/incident",
        parameters={"alert": alert.model_dump(mode="json"), "config_path": config_path},
        tags=creation_tags(alert),
        idempotency_key=key,
        timeout=0,
    )
    return str(run.id)


async def submit(alert: Alert, api: PrefectAPI, opener: Opener) -> Submission:
    """Joins the alert to its open incident, or opens one with ``opener``.

    Alerts of one service are handled one at a time in this process, so a storm
    opens one incident and the rest join it.
    """
    lock = _locks.setdefault(alert.service, asyncio.Lock())
    async with lock:
        existing = await asyncio.to_thread(find_open, api, alert)
        if existing is not None:
            message = {"kind": "alert", "alert": alert.model_dump(mode="json")}
            await asyncio.to_thread(send_control, api, existing["id"], message)
            return Submission(action="joined", incident_run_id=existing["id"])
        if alert.status == "resolved":
            return Submission(action="ignored", reason="resolved alert with no open incident")
        return Submission(action="opened", incident_run_id=await opener(alert))
