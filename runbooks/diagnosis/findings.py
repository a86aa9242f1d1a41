"""Reading a diagnosis back: which findings of a check report a problem, and what a check saw.

Every runbook's plan and notes ask its findings these two questions; they are answered here
once, so "a problem" and "what it could read" mean the same in each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from checks.findings import Evidence, Finding, Status

__all__ = ["problems", "seen"]

E = TypeVar("E", bound=Evidence)


def problems(findings: Sequence[Finding], check: str) -> list[Finding]:
    """The findings of one check that report a problem."""
    return [f for f in findings if f.check == check and f.status.is_problem]


def seen(findings: Sequence[Finding], check: str, model: type[E]) -> E | None:
    """What that check saw, read through its evidence model; None when it did not run or
    could not read (an ERROR finding carries no such evidence)."""
    found = (f for f in findings if f.check == check and f.status is not Status.ERROR)
    return next((f.evidence_as(model) for f in found), None)
