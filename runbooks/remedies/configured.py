"""Configured actions: the changes a service names in oncall.yaml (``actions:``), run once.

A service may configure an HTTP call or a command for a change only it knows how to make —
``disable_feature_flag``, ``clear_cache``, ``scale``, ``pause_consumers`` … A runbook proposes
one with :func:`configured_action`, whose preview is the exact call; the remediation
:func:`run_configured_action` runs it only if the configuration is still the one previewed
and, when the action carries a :class:`Recheck`, only while the symptom still calls for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from checks import http_metrics as hm
from integrations.commands import describe, run_configured
from integrations.errors import TargetError
from integrations.prometheus import PrometheusClient
from integrations.service import Service
from runbooks.engine.guard import remediation
from runbooks.engine.model import Action, ActionResult, Risk
from runbooks.engine.runbook import ActionKind, NoUndo, Remedy

__all__ = [
    "CONFIGURED",
    "Configured",
    "Recheck",
    "configured_action",
    "configured_actions",
    "run_configured_action",
    "skipped",
    "still_needed",
]


class Configured(ActionKind):
    RUN = "configured"


class Recheck(BaseModel):
    """The symptom an action is for, re-measured just before it runs: under the threshold
    again means the action is no longer needed (the approver decided on older evidence)."""

    model_config = ConfigDict(frozen=True)

    query: str
    threshold: float
    what: str
    unit: Literal["ratio", "seconds"]

    def shown(self, value: float) -> str:
        return f"{value:.1%}" if self.unit == "ratio" else f"{value:.2f}s"


def configured_action(
    service: Service, key: str, *, why: str, recheck: Recheck | None
) -> Action | None:
    """An Action running the service's configured ``key`` action (None if not configured)."""
    cfg = service.actions.get(key)
    if cfg is None:
        return None
    call = describe(cfg)
    return Action(
        id=key.replace("_", "-"),
        kind=Configured.RUN,
        target=service.name,
        risk=Risk(cfg.risk),
        title=f"{cfg.description} (configured action '{key}')",
        preview=f"{call}\nWhy: {why}",
        items=[{"action": key, "call": call}],
        undo=cfg.undo or "no undo configured: run the opposite change by hand",
        params={
            "name": key,
            "call": call,
            "recheck": recheck.model_dump() if recheck is not None else None,
        },
    )


def configured_actions(
    service: Service, wanted: Mapping[str, bool], *, why: str, recheck: Recheck | None
) -> tuple[list[Action], list[dict[str, Any]]]:
    """The configured actions the params switch on, and the configured ones they leave out."""
    actions: list[Action] = []
    spared: list[dict[str, Any]] = []
    for key, on in wanted.items():
        if key in service.actions and not on:
            spared.append({"action": key, "reason": f"configured but not proposed ({key}=false)"})
        elif on and (action := configured_action(service, key, why=why, recheck=recheck)):
            actions.append(action)
    return actions, spared


async def still_needed(service: Service, recheck: dict[str, Any] | None) -> str | None:
    """Why the symptom no longer calls for the action, or None (also when it cannot tell)."""
    if not recheck or not service.prometheus:
        return None
    check = Recheck.model_validate(recheck)
    try:
        async with PrometheusClient(service.prometheus) as prom:
            now = await hm.current_value(prom, check.query)
    except TargetError:
        return None  # cannot re-check: the approver decided on the evidence shown
    if now is not None and now < check.threshold:
        return f"the {check.what} is already down to {check.shown(now)}, under its threshold"
    return None


def skipped(action: Action, why: str) -> ActionResult:
    """The result of an action the live system no longer calls for."""
    return ActionResult(
        action_id=action.id, title=action.title, status="skipped", detail=f"skipped: {why}"
    )


@remediation
async def run_configured_action(action: Action, *, service: Service) -> ActionResult:
    """Runs the planned configured action unless it changed or the symptom is gone."""
    cfg = service.actions.get(action.params["name"])
    if cfg is None or describe(cfg) != action.params["call"]:
        return skipped(action, f"the configured '{action.params['name']}' changed since the plan")
    if why := await still_needed(service, action.params.get("recheck")):
        return skipped(action, why)
    detail = await run_configured(cfg)
    return ActionResult(action_id=action.id, title=action.title, status="done", detail=detail)


# A configured action's undo is whatever the service configured with it (shown in the plan);
# oncall cannot know the opposite of an arbitrary call.
CONFIGURED = Remedy(
    run=run_configured_action,
    undo=NoUndo(reason="run the service's configured undo for it by hand, if it has one"),
)
