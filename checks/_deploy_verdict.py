"""The deploy verdict: which recent deploy is the suspect, and which one is last known good.

A deploy is the *suspect* when it is the live one and either the error rate rose after it, or
it went live after ``incident_start - grace`` (then its own rollout failing, or the timing
alone, implicates it). The *last known good* one is the newest earlier deploy that can still
be rolled back to and either ran with a low error rate or ran before the incident window.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from checks.findings import Status

__all__ = ["Deploy", "DeployPolicy", "Platform", "Symptom", "Verdict", "assess"]

Platform = Literal["kubernetes", "docker", "vercel"]


class DeployPolicy(BaseModel):
    """When a deploy counts as recent, and what error rate counts as a regression."""

    incident_start: datetime
    grace_s: float = Field(900.0, description="A deploy this long before the start still counts")
    error_window_s: float = Field(300.0, description="Window before/after each deploy")
    warn_pct: float = Field(1.0, description="Error rate that is a problem (seed: P2 at 1%)")
    outage_pct: float = Field(10.0, description="Error rate of an outage (seed: P0 above 10%)")
    regression_factor: float = Field(2.0, description="After/before ratio of a regression")
    to: str | None = Field(None, description="Roll back to this ref instead of the last good")
    max_deploys: int = Field(10, description="How many recent deploys to list")
    unconfirmed: Status = Field(Status.WARN, description="Status of a suspect by timing alone")
    start_known: bool = Field(True, description="False when incident_start is only a default")

    @property
    def cutoff(self) -> datetime:
        return self.incident_start - timedelta(seconds=self.grace_s)


class Deploy(BaseModel):
    """One deploy of any platform, with its error rate before and after when known."""

    platform: Platform
    ref: str = Field(description="Revision number, image tag or deployment id")
    label: str = Field(description="e.g. 'revision 7 (image api:1.4.2)'")
    created: datetime | None
    current: bool = False
    available: bool = Field(True, description="Can still be rolled back to")
    detail: dict[str, Any] = Field(default_factory=dict)
    error_before_pct: float | None = None
    error_after_pct: float | None = None
    verdict: str = ""


class Symptom(BaseModel):
    """What the live deploy's own rollout shows (pods not ready, containers restarting)."""

    text: str
    outage: bool = False


class Verdict(BaseModel):
    """Which deploy is the suspect, and which one to go back to."""

    current: Deploy | None = None
    suspect: Deploy | None = None
    last_good: Deploy | None = None
    confirmed: bool = False
    why: str = ""
    no_good: str | None = None


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def _regressed(d: Deploy, policy: DeployPolicy) -> bool | None:
    if d.error_after_pct is None:
        return None
    before = d.error_before_pct or 0.0
    return d.error_after_pct >= policy.warn_pct and (
        d.error_after_pct >= policy.regression_factor * before
    )


def _when(d: Deploy, policy: DeployPolicy) -> str:
    if d.created is None:
        return "at an unknown time"
    if not policy.start_known:
        ago = (datetime.now(UTC) - d.created).total_seconds() / 60
        return f"{ago:.0f} min ago"
    minutes = (d.created - policy.incident_start).total_seconds() / 60
    side = "after" if minutes >= 0 else "before"
    return f"{abs(minutes):.0f} min {side} the incident start"


def assess(deploys: list[Deploy], policy: DeployPolicy, symptom: Symptom | None) -> Verdict:
    """Names the suspect and the last known good deploy; ``deploys`` go oldest first."""
    if not deploys:
        return Verdict(why="no deploys found", no_good="no deploy history")
    current = next((d for d in deploys if d.current), deploys[-1])
    recent = current.created is not None and current.created >= policy.cutoff
    regressed = _regressed(current, policy)
    rates = f"error rate {_pct(current.error_before_pct)} → {_pct(current.error_after_pct)}"
    if regressed:
        why, confirmed = f"{current.label} went live {_when(current, policy)}; {rates}", True
    elif recent and symptom:
        why, confirmed = f"{current.label} went live {_when(current, policy)}; {symptom.text}", True
    elif recent and regressed is None:
        why, confirmed = f"{current.label} went live {_when(current, policy)} (timing only)", False
    elif policy.to and policy.to not in (current.ref, current.ref.rsplit(":", 1)[-1]):
        why, confirmed = f"{current.label} is live; a rollback to {policy.to} was asked", False
    elif recent:
        current.verdict = "cleared"
        return Verdict(
            current=current,
            why=f"{current.label} went live {_when(current, policy)}, but the error rate did"
            f" not rise after it ({_pct(current.error_before_pct)} →"
            f" {_pct(current.error_after_pct)})",
        )
    else:
        since = policy.cutoff.strftime("%Y-%m-%d %H:%M UTC")
        return Verdict(current=current, why=f"no deploy since {since}; live: {current.label}")
    current.verdict = "suspect"
    older = deploys[: deploys.index(current)]
    good, no_good = _last_good(older, current, policy)
    if good is not None:
        good.verdict = "last known good"
    return Verdict(
        current=current,
        suspect=current,
        last_good=good,
        confirmed=confirmed,
        why=why,
        no_good=no_good,
    )


def _last_good(
    older: list[Deploy], current: Deploy, policy: DeployPolicy
) -> tuple[Deploy | None, str | None]:
    if policy.to:
        wanted = [d for d in older if policy.to in (d.ref, d.ref.rsplit(":", 1)[-1])]
        if not wanted:
            return None, f"{policy.to!r} is not an earlier deploy of this target"
        if not wanted[-1].available:
            return None, f"{wanted[-1].label} can no longer be rolled back to"
        return wanted[-1], None
    if not older:
        return None, f"{current.label} is the only deploy in the history"
    for d in reversed(older):
        if not d.available:
            d.verdict = "not available"
        elif d.error_after_pct is not None and d.error_after_pct >= policy.warn_pct:
            d.verdict = f"bad: error rate {_pct(d.error_after_pct)} while live"
        elif d.error_after_pct is not None or (d.created and d.created < policy.cutoff):
            return d, None
        else:
            d.verdict = "unknown: went live inside the incident window"
    return None, "no earlier deploy is known good (" + "; ".join(
        f"{d.label}: {d.verdict}" for d in reversed(older)
    ) + ")"
