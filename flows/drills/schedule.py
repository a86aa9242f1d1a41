"""Drills on a schedule: the ``drills`` deployment runs a game day in the sandbox on a cron.

``oncall serve`` declares it from ``drills:`` in oncall.yaml (``cron``, default monthly;
``scenarios``, default all; ``enabled``) and prefect.yaml declares the same deployment for
work pools. Each run plays the scenarios in turn on the machine that runs it, every plan
pre-approved as :data:`APPROVER` (the sandbox is the only thing changed), and records each
scorecard in Prefect as :mod:`flows.drills.record` documents: per scenario an
``oncall.drill.passed|failed|error`` event whose payload is the scorecard, and a
``drill-<scenario>`` markdown artifact; per run a ``drill-game-day`` table artifact. The
events and artifacts are related to (written on) this flow run.

A drill that failed or could not run opens a **P3 incident "runbook X failed its drill"**
through the same intake as alerts (:func:`flows.intake.submit`): an :class:`Alert` from
source ``drill``, service ``runbook:<scenario>``, a fingerprint per scenario (a runbook
still failing next time joins its open incident). Incidents are opened by the ``incident``
deployment unless :func:`set_opener` says otherwise (tests).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from datetime import UTC, datetime
from functools import partial
from typing import Any

from prefect import flow, get_run_logger
from rich.console import Console

from flows.config import OncallConfig
from flows.config_load import find_config, load_config
from flows.drills.gameday import GameDay, run_game_day
from flows.drills.record import record_card, record_error, record_game_day
from flows.drills.registry import DRILLS
from flows.drills.scorecard import ACCEPTED, Scorecard
from flows.intake import Opener, open_by_deployment, submit
from flows.prefect_api import PrefectAPI
from integrations.alerts import Alert, Severity

__all__ = ["APPROVER", "drill_alert", "drills", "set_opener"]

APPROVER = "scheduled-drill"

_opener: Opener | None = None


def set_opener(opener: Opener | None) -> None:
    """Sets how failing drills open incidents (tests); None restores the deployment."""
    global _opener
    _opener = opener


def _why(card: Scorecard) -> str:
    reasons = []
    if card.result not in ACCEPTED[card.expect]:
        reasons.append(f"expected {card.expect}, got {card.result}")
    reasons += [
        f"{phase.replace('_', ' ')}: "
        + (f"SLA {verdict}" if phase in card.times_s else "never reached")
        for phase, verdict in card.verdicts.items()
        if verdict not in ("met", "no SLA")
    ]
    return "; ".join(reasons) or "did not pass"


def drill_alert(scenario: str, why: str, at: datetime, run_url: str | None = None) -> Alert:
    """The P3 alert a failing drill raises; one fingerprint per scenario."""
    key = f"drill\n{scenario}"
    return Alert(
        source="drill",
        service=f"runbook:{scenario}",
        title=f"runbook {scenario} failed its drill",
        fingerprint=hashlib.sha256(key.encode()).hexdigest()[:16],
        severity=Severity.P3,
        labels={"alertname": "RunbookDrillFailed", "runbook": scenario, "severity": "P3"},
        annotations={
            "summary": f"the scheduled drill of runbook {scenario} failed: {why}",
            "description": f"runbook {scenario} failed its drill: {why}. Run `oncall drill"
            f" {scenario}` to see it; fix the runbook before a real incident needs it.",
        },
        url=run_url,
        starts_at=at,
    )


async def _open_incidents(
    failures: dict[str, str], api_url: str, opener: Opener, at: datetime, run_url: str | None
) -> dict[str, dict[str, Any]]:
    opened: dict[str, dict[str, Any]] = {}
    with PrefectAPI(api_url) as api:
        for scenario, why in failures.items():
            alert = drill_alert(scenario, why, at, run_url)
            try:
                done = await submit(alert, api, opener)
            except Exception as exc:  # one failed submission must not lose the others
                opened[scenario] = {"action": "failed", "reason": str(exc)}
                continue
            opened[scenario] = done.model_dump(mode="json")
    return opened


def _api_url() -> str:
    from prefect.settings import get_current_settings

    return str(get_current_settings().api.url or "")


def _run_url(run_id: str | None) -> str | None:
    if not run_id:
        return None
    return f"{_api_url().removesuffix('/api')}/runs/flow-run/{run_id}"


@flow(name="drills", log_prints=False)
def drills(
    config: OncallConfig | None = None,
    config_path: str | None = None,
    scenarios: list[str] | None = None,
) -> dict[str, Any]:
    """Runs the scheduled game day in the sandbox; a failing drill opens a P3 incident."""
    from prefect.context import FlowRunContext

    logger = get_run_logger()
    path = config_path or find_config()
    cfg = config or load_config(path)
    names = list(scenarios or cfg.drills.scenarios or DRILLS)
    unknown = [n for n in names if n not in DRILLS]
    if unknown:
        raise ValueError(f"unknown drill(s) {', '.join(unknown)} (known: {', '.join(DRILLS)})")
    at = datetime.now(UTC).replace(microsecond=0)
    # The runbooks' live view goes nowhere: their findings, plans and reports are in Prefect.
    quiet = Console(file=io.StringIO())

    def on_card(card: Scorecard) -> None:
        record_card(card, trigger="schedule")
        logger.info(
            "drill %s: %s (%s)", card.scenario, "passed" if card.passed else "FAILED", card.result
        )

    def on_error(name: str, why: str) -> None:
        record_error(name, why, trigger="schedule")
        logger.warning("drill %s could not run: %s", name, why)

    day: GameDay = run_game_day(
        names,
        approve_as=APPROVER,
        console=quiet,
        interactive=False,
        show=False,
        on_card=on_card,
        on_error=on_error,
    )
    record_game_day(day, trigger="schedule")
    failures = {c.scenario: _why(c) for c in day.scorecards if not c.passed}
    failures |= {name: f"could not run: {why}" for name, why in day.errors.items()}
    incidents: dict[str, dict[str, Any]] = {}
    if failures:
        ctx = FlowRunContext.get()
        run_id = str(ctx.flow_run.id) if ctx and ctx.flow_run else None
        where = str(path) if path else None
        opener = _opener or partial(open_by_deployment, config_path=where)
        incidents = asyncio.run(_open_incidents(failures, _api_url(), opener, at, _run_url(run_id)))
        for scenario, done in incidents.items():
            logger.warning("runbook %s failed its drill: incident %s", scenario, done)
    return {
        "passed": day.passed,
        "scorecards": [c.model_dump(mode="json") for c in day.scorecards],
        "errors": day.errors,
        "incidents": incidents,
    }
