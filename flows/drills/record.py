"""Each drill's scorecard kept in Prefect, so a report can read drill freshness back.

Every drill, run by hand (``oncall drill``) or by the scheduled ``drills`` deployment,
leaves **one event and one artifact per scenario**, and a game day one more artifact:

Event (``prefect.events``), one per scenario run:

- ``event``: ``oncall.drill.passed`` | ``oncall.drill.failed`` | ``oncall.drill.error``
  (``error``: the drill could not run, e.g. Prometheus missing; ``failed``: it ran and the
  runbook did not pass — outcome not accepted, or an SLA missed);
- ``resource``: ``{"prefect.resource.id": "oncall.drill.<scenario>",
  "prefect.resource.name": "<scenario>", "oncall.runbook": "<scenario>",
  "oncall.drill.result": "passed|failed|error"}`` — a scenario is named after the runbook
  it drills;
- ``related``: ``{"prefect.resource.id": "oncall.runbook.<scenario>",
  "prefect.resource.role": "runbook"}``; the runbook's flow run
  (``prefect.flow-run.<id>``, role ``runbook-run``) when it ran; the flow run that ran the
  drill (role ``flow-run``) when there is one (the scheduled deployment);
- ``payload``: ``{"scenario", "result", "trigger": "cli" | "schedule", "scorecard":
  Scorecard JSON or null, "error": str or null}``. The scorecard is
  :class:`flows.drills.scorecard.Scorecard` (``passed``, ``outcome``, ``result`` = fixed /
  mitigated / "not fixed (…)", ``severity``, ``times_s`` from the fault, ``verdicts``).

Artifacts: a markdown artifact with key ``drill-<scenario>`` per scenario run (its Prefect
history is the scenario's drill history; description ``drill <scenario>: <result>``; the
same one-row table as below), and for a game day a table artifact with key
``drill-game-day`` (one row per scenario, keys :data:`flows.drills.gameday.COLUMNS`:
scenario, severity, detect, first finding, decision, mitigation, fixed vs mitigated, SLA,
drill = passed | FAILED | "ERROR: <why>"; its description is the same table in markdown).
They are written on the flow run that ran the drills (the scheduled deployment's run);
from ``oncall drill``, a scenario's artifact is on its runbook's run and the game-day
table stands alone.

Recording never fails a drill: a Prefect that cannot take the artifact is logged.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from flows.drills.gameday import GameDay, markdown, rows
from flows.drills.scorecard import Scorecard

__all__ = ["Trigger", "event_name", "record_card", "record_error", "record_game_day"]

log = logging.getLogger("oncall.drills")
Trigger = Literal["cli", "schedule"]


def event_name(result: str) -> str:
    """``oncall.drill.<result>``."""
    return f"oncall.drill.{result}"


def _emit(scenario: str, result: str, payload: dict[str, Any], runbook_run: str | None) -> None:
    from prefect.events import emit_event

    related = [
        {"prefect.resource.id": f"oncall.runbook.{scenario}", "prefect.resource.role": "runbook"}
    ]
    if runbook_run:
        related.append(
            {
                "prefect.resource.id": f"prefect.flow-run.{runbook_run}",
                "prefect.resource.role": "runbook-run",
            }
        )
    if (here := _run_id()) is not None:
        related.append(
            {"prefect.resource.id": f"prefect.flow-run.{here}", "prefect.resource.role": "flow-run"}
        )
    emit_event(
        event=event_name(result),
        resource={
            "prefect.resource.id": f"oncall.drill.{scenario}",
            "prefect.resource.name": scenario,
            "oncall.runbook": scenario,
            "oncall.drill.result": result,
        },
        related=related,
        payload=payload,
    )


def _run_id(fallback: str | None = None) -> str | None:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else fallback


def _artifact(key: str, kind: str, data: str, description: str, run_id: str | None) -> None:
    """Writes the artifact on the given flow run (none: a free-standing one)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate

    artifact = ArtifactCreate(
        key=key, type=kind, data=data, description=description, flow_run_id=run_id
    )
    try:
        with get_client(sync_client=True) as client:
            client.create_artifact(artifact)
    except Exception as exc:  # the scorecard is printed and evented: an artifact is extra
        log.warning("drill artifact %s not written: %s", key, exc)


def record_card(card: Scorecard, trigger: Trigger) -> None:
    """The scorecard's event and its ``drill-<scenario>`` artifact."""
    result = "passed" if card.passed else "failed"
    payload = {
        "scenario": card.scenario,
        "result": result,
        "trigger": trigger,
        "scorecard": card.model_dump(mode="json"),
        "error": None,
    }
    _emit(card.scenario, result, payload, card.flow_run_id)
    _artifact(
        f"drill-{card.scenario}",
        "markdown",
        markdown(GameDay(scorecards=[card]), title=f"Drill {card.scenario}"),
        f"drill {card.scenario}: {result}",
        _run_id(card.flow_run_id),
    )


def record_error(scenario: str, why: str, trigger: Trigger) -> None:
    """A drill that could not run: ``oncall.drill.error`` and its artifact."""
    payload = {
        "scenario": scenario,
        "result": "error",
        "trigger": trigger,
        "scorecard": None,
        "error": why,
    }
    _emit(scenario, "error", payload, None)
    _artifact(
        f"drill-{scenario}",
        "markdown",
        markdown(GameDay(errors={scenario: why}), title=f"Drill {scenario}"),
        f"drill {scenario}: error",
        _run_id(),
    )


def record_game_day(day: GameDay, trigger: Trigger) -> None:
    """The game day's table artifact (``drill-game-day``)."""
    _artifact(
        "drill-game-day",
        "table",
        json.dumps(rows(day)),
        markdown(day, title=f"Game day ({trigger})"),
        _run_id(),
    )
