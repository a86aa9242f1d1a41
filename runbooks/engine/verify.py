"""What "fixed" means: each runbook's verification rule, judged on samples after acting.

After a remediation the kernel samples the runbook's verification checks every second:
first until they are healthy (at most ``verify_timeout_seconds``), then for
``verify_hold_seconds`` more — the fix must hold. The runbook's rule then judges every
sample:

- **fixed**: the cause is gone (healthy, and it held for the whole window);
- **mitigated**: the symptom went away but the cause did not (it came back within the
  window, or the rule sees the cause still at work: a leak still growing, arrivals still
  outpacing the workers) — with the next step named;
- **not recovered**: never healthy.

Rules are small objects; :class:`Holds` is the common one, runbooks with a cause the
checks can measure (memory slope, drain vs arrival rate) declare their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from checks.findings import Finding

__all__ = [
    "Holds",
    "Judgement",
    "Sample",
    "Verdict",
    "VerifyRule",
    "healthy",
    "held_short",
    "recovered",
]


def healthy(findings: Sequence[Finding]) -> bool:
    """No finding reports a problem (warn or critical)."""
    return not any(f.status.is_problem for f in findings)


def recovered(findings: Sequence[Finding]) -> bool:
    """Healthy, and seen: a check that could not run (``error``) proves nothing after a fix.
    ``unknown`` (nothing to measure, e.g. no pg_stat_statements) is no evidence either way."""
    return healthy(findings) and not any(f.status == "error" for f in findings)


class Verdict(StrEnum):
    FIXED = "fixed"
    MITIGATED = "mitigated"
    NOT_RECOVERED = "not_recovered"


class Judgement(BaseModel):
    """The verdict on a remediation, with why and (unless fixed) what to do next."""

    verdict: Verdict
    reason: str
    next_step: str | None = None


class Sample(BaseModel):
    """One round of the verification checks, ``at_s`` seconds after the actions ran."""

    at_s: float
    findings: list[Finding] = Field(default_factory=list)


def held_short(held: float, hold: float, *, state: str, what: str) -> Judgement | None:
    """Mitigated when the samples were ``state`` for less than the ``hold`` window (the
    verification ended before ``what`` had held), else None."""
    if held + 1e-6 >= hold:
        return None
    return Judgement(
        verdict=Verdict.MITIGATED,
        reason=f"{state} for {held:.0f}s of the {hold:.0f}s the fix must hold",
        next_step=f"watch it: the verification window ended before the {what} had held",
    )


@runtime_checkable
class VerifyRule(Protocol):
    """A runbook's definition of fixed vs mitigated."""

    def judge(self, samples: Sequence[Sample], params: Any) -> Judgement: ...


class Holds(BaseModel):
    """Fixed when the checks (all, or those named) turn healthy and stay healthy for the
    hold window; a relapse inside the window is only mitigated.

    ``relapse`` and ``next_step`` are what the report says when the problem comes back;
    ``{hold}`` in them is replaced by the window in seconds.
    """

    model_config = ConfigDict(frozen=True)

    checks: tuple[str, ...] = ()
    relapse: str = "the problem came back within {hold}s of the fix"
    next_step: str = "the cause is still there: investigate it before it exhausts the fix"
    unrecovered_step: str = "the actions did not help: escalate and investigate by hand"

    def _relevant(self, sample: Sample) -> list[Finding]:
        if not self.checks:
            return sample.findings
        return [f for f in sample.findings if f.check in self.checks]

    def judge(self, samples: Sequence[Sample], params: Any) -> Judgement:
        hold = float(getattr(params, "verify_hold_seconds", 0.0))
        first_ok = next((s for s in samples if recovered(self._relevant(s))), None)
        if first_ok is None:
            last = samples[-1] if samples else None
            problem = next(
                (
                    f
                    for f in (self._relevant(last) if last else [])
                    if f.status.is_problem or f.status == "error"
                ),
                None,
            )
            return Judgement(
                verdict=Verdict.NOT_RECOVERED,
                reason=f"still unhealthy: {problem.summary}" if problem else "no sample taken",
                next_step=self.unrecovered_step,
            )
        after = [s for s in samples if s.at_s >= first_ok.at_s]
        relapsed = next((s for s in after if not recovered(self._relevant(s))), None)
        if relapsed is not None:
            problem = next(
                f for f in self._relevant(relapsed) if f.status.is_problem or f.status == "error"
            )
            return Judgement(
                verdict=Verdict.MITIGATED,
                reason=f"{self.relapse.format(hold=f'{hold:.0f}')}: {problem.summary}",
                next_step=self.next_step.format(hold=f"{hold:.0f}"),
            )
        held = after[-1].at_s - first_ok.at_s
        if short := held_short(held, hold, state="healthy", what="fix"):
            return short
        return Judgement(
            verdict=Verdict.FIXED,
            reason=f"healthy {first_ok.at_s:.0f}s after acting and for {held:.0f}s since",
        )
