"""A game day: several drills in turn, one scorecard table (``oncall drill all``).

Each scenario runs as ``oncall drill NAME`` would; one that cannot run (something it needs
is missing, its sandbox did not start) is an error row and the others still run. The table
has, per scenario: the severity, the times from the fault to detection, the first finding,
the decision and the mitigation, fixed vs mitigated (from the runbook report's outcome),
the SLA verdict and whether the drill passed. :mod:`flows.drills.record` keeps each
scorecard in Prefect; :mod:`flows.drills.console` is ``oncall drill all`` at a terminal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, Field, computed_field

from flows.drills.registry import load, missing
from flows.drills.scorecard import Scorecard
from integrations.errors import OncallError

__all__ = ["COLUMNS", "GameDay", "markdown", "rows", "run_game_day", "table"]

COLUMNS = (
    "scenario",
    "severity",
    "detect",
    "first finding",
    "decision",
    "mitigation",
    "fixed vs mitigated",
    "SLA",
    "drill",
)


class GameDay(BaseModel):
    """The scorecards of a game day, in run order, and the scenarios that could not run."""

    scorecards: list[Scorecard] = Field(default_factory=list)
    errors: dict[str, str] = Field(default_factory=dict, description="scenario -> why")

    @computed_field  # type: ignore[prop-decorator]  # mypy rejects decorated properties
    @property
    def passed(self) -> bool:
        return not self.errors and all(card.passed for card in self.scorecards)


def run_game_day(
    names: Sequence[str],
    *,
    approve_as: str | None,
    console: Any,
    interactive: bool,
    show: bool,
    on_card: Callable[[Scorecard], None] | None = None,
    on_error: Callable[[str, str], None] | None = None,
) -> GameDay:
    """Runs each scenario in turn; a scenario that fails to run is recorded, not raised."""
    day = GameDay()
    for name in names:
        lack = missing(name)
        if lack:
            why = "; ".join(lack)
        else:
            try:
                card = load(name)(
                    approve_as=approve_as, console=console, interactive=interactive, show=show
                )
            except OncallError as exc:  # a sandbox that would not start, a missing service
                why = str(exc)
            else:
                day.scorecards.append(card)
                if on_card is not None:
                    on_card(card)
                continue
        day.errors[name] = why
        if on_error is not None:
            on_error(name, why)
    return day


def _seconds(card: Scorecard, phase: str) -> str:
    value = card.times_s.get(phase)
    return "-" if value is None else f"{value:.1f}"


def _sla(card: Scorecard) -> str:
    """``met``, or which phases missed the severity's SLA (seed 000 Part D)."""
    if card.sla_met:
        return "met"
    missed = [p for p, verdict in card.verdicts.items() if verdict not in ("met", "no SLA")]
    return "missed: " + ", ".join(f"{p.replace('_', ' ')} {card.verdicts[p]}" for p in missed)


def rows(day: GameDay) -> list[dict[str, str]]:
    """One row per scenario, in :data:`COLUMNS` order; errors after the scorecards."""
    out = [
        dict(
            zip(
                COLUMNS,
                (
                    card.scenario,
                    str(card.severity),
                    _seconds(card, "detect"),
                    _seconds(card, "first_finding"),
                    _seconds(card, "decide"),
                    _seconds(card, "mitigate"),
                    card.result,
                    _sla(card),
                    "passed" if card.passed else "FAILED",
                ),
                strict=True,
            )
        )
        for card in day.scorecards
    ]
    for name, why in day.errors.items():
        out.append({c: "-" for c in COLUMNS} | {"scenario": name, "drill": f"ERROR: {why}"})
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(day: GameDay, title: str = "Game day") -> str:
    """The scorecard table as markdown (the Prefect artifact)."""
    verdict = "every drill passed" if day.passed else "some drills failed"
    lines = [
        f"# {title}: {verdict}",
        "",
        "Times are seconds from the injected fault; fixed vs mitigated is the runbook"
        " report's outcome; SLA is the severity's (seed 000 Part D: P0 acknowledged in"
        " 2 min and resolved in 1 h, P1 5 min / 4 h, P2 30 min / 24 h).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(_cell(r[c]) for c in COLUMNS) + " |" for r in rows(day)]
    return "\n".join(lines) + "\n"


# The terminal's headers: the same columns, short enough for 80 characters.
_SHORT = ("scenario", "sev", "detect", "finding", "decide", "mitigate", "result", "SLA", "drill")


def table(day: GameDay) -> Any:
    """The scorecard table for the terminal (why a scenario could not run: below it)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    out = Table(
        title="Game day: seconds from the fault", box=None, pad_edge=False, collapse_padding=True
    )
    for short in _SHORT:
        out.add_column(short, min_width=len(short), no_wrap=short != "result")
    for row in rows(day):
        drill = "ERROR" if row["drill"].startswith("ERROR") else row["drill"]
        style = "green" if drill == "passed" else "red"
        out.add_row(*(row[c] for c in COLUMNS[:-1]), Text(drill, style=style))
    notes = [Text(f"{name} could not run: {why}", style="red") for name, why in day.errors.items()]
    return Group(out, *notes)
