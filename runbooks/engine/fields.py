"""The kinds of runbook parameter, each with its bounds stated once.

A runbook's ``...Params`` model declares every field with a description (the CLI's and
the Prefect UI's help); these build the pydantic ``Field`` for the kinds that recur — a
share in %, a duration, a count, a switch — so a threshold in % is bounded the same way in
every runbook, and the verification windows every runbook may tune keep the engine's
bounds when a runbook changes their default. The fields more than one runbook declares
alike (seed 000's error-rate levels, our status page's components) are built here once.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

__all__ = [
    "HOUR",
    "count",
    "error_rate_critical",
    "error_rate_warn",
    "lookback",
    "percent",
    "seconds",
    "status_components",
    "step",
    "switch",
    "verify_window",
]

HOUR = 3_600  # the longest a run waits for or watches a recovery (s)


def percent(default: float, description: str, *, zero: bool = False) -> Any:
    """A share in % of something (a limit, the calls made): above 0 (``zero``: 0 allowed), 100
    at most."""
    if zero:
        return Field(default=default, ge=0, le=100, description=description)
    return Field(default=default, gt=0, le=100, description=description)


def seconds(
    default: float,
    description: str,
    *,
    ge: float | None = 0,
    gt: float | None = None,
    le: float | None = None,
) -> Any:
    """A duration or an age in seconds: never negative (``gt=0``: never zero either)."""
    return Field(
        default=default, ge=None if gt is not None else ge, gt=gt, le=le, description=description
    )


def count(default: int | None, description: str, *, ge: int = 0, le: int | None = None) -> Any:
    """A number of things (sessions, workers, messages, calls): ``ge`` at least."""
    return Field(default=default, ge=ge, le=le, description=description)


def switch(default: bool, description: str) -> Any:
    """Whether to propose or do something."""
    return Field(default=default, description=description)


def lookback(default: float, description: str) -> Any:
    """How much history to read (s): ten seconds to a week."""
    return Field(default=default, ge=10, le=7 * 86_400, description=description)


def step(default: float, description: str) -> Any:
    """The resolution of that history (s): above 0, an hour at most."""
    return seconds(default, description, gt=0, le=HOUR)


def verify_window(default: float, description: str) -> Any:
    """``verify_timeout_seconds`` (how long to wait for recovery) or ``verify_hold_seconds`` (how
    long it must hold to count as fixed): an hour at most."""
    return seconds(default, description, le=HOUR)


def error_rate_warn() -> Any:
    """``error_rate_warn_pct``: the 5xx share that is a problem (seed 000's P2 level)."""
    return percent(1.0, "Error rate that is a problem (seed 000: P2 1-5%)", zero=True)


def error_rate_critical() -> Any:
    """``error_rate_critical_pct``: the 5xx share that is critical (seed 000's P1 level)."""
    return percent(5.0, "Error rate that is critical (seed 000: P1 5-10%)", zero=True)


def status_components() -> Any:
    """``our_components``: the components of our status page that a runbook posting there
    (provider-outage, hms-failures) marks while a provider is affected."""
    return Field(
        default_factory=list, description="Component ids on our status page to mark while affected"
    )
