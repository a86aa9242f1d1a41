"""``oncall drill all`` at a terminal: the game day, each drill's panel, then one table."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from flows.drills.gameday import run_game_day, table
from flows.drills.record import record_card, record_error, record_game_day
from flows.drills.scorecard import Scorecard

__all__ = ["run_and_show"]


def run_and_show(
    names: Sequence[str], *, approve_as: str | None, console: Any, json_out: bool
) -> bool:
    """``oncall drill all``: runs the game day at the terminal, records each scorecard in
    Prefect, prints each drill's panel and then the table (or JSON); True if all passed."""
    from flows.render import scorecard_panel

    def shown(card: Scorecard) -> None:
        record_card(card, trigger="cli")
        if not json_out:
            console.print(scorecard_panel(card))

    def failed(name: str, why: str) -> None:
        record_error(name, why, trigger="cli")
        console.print(f"[red]Drill {name} could not run:[/red] {why}")

    day = run_game_day(
        names,
        approve_as=approve_as,
        console=console,
        interactive=sys.stdin.isatty() and not json_out,
        show=not json_out,
        on_card=shown,
        on_error=failed,
    )
    record_game_day(day, trigger="cli")
    if json_out:
        sys.stdout.write(day.model_dump_json(indent=2) + "\n")
    else:
        if not console.is_terminal:  # piped: one line a scenario (a terminal keeps its width)
            console.width = max(console.width, 100)
        console.print(table(day))
    return day.passed
