"""Incident severity from an alert and from the seeds' alert rules (thresholds on metrics).

Thresholds come from seed 000 Part H ("Alert Rules"), Incident 4 (memory) and Incident 6
(p95 latency), and seed 004 ("Email Queue Backed Up"). Where the seeds disagree, Part H wins:
Incident 5 calls an error rate above 10 % P1, Part H calls it P0.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from checks.findings import Finding
from integrations.alerts import Alert, Severity

__all__ = [
    "DEFAULT_RULES",
    "Classification",
    "SeverityRule",
    "classify",
    "incident_severity",
    "severity_for_metric",
    "suggested_severity",
]

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
}


class SeverityRule(BaseModel):
    """One alert rule: when ``metric op value`` holds, the incident is at least ``severity``."""

    model_config = ConfigDict(frozen=True)

    metric: str = Field(description="Name in Alert.metrics, e.g. error_rate (a fraction 0..1)")
    op: Literal[">", ">=", "<", "<=", "=="]
    value: float = Field(description="Threshold in the metric's unit")
    severity: Severity
    reason: str = Field(description="A sentence citing the seed the threshold comes from")

    def matches(self, observed: float) -> bool:
        """True when the observed number crosses this rule's threshold."""
        return math.isfinite(observed) and _OPS[self.op](observed, self.value)

    def describe(self, observed: float) -> str:
        """The rule with the observed number, e.g. ``error_rate=0.12 > 0.1 → P0``."""
        return f"{self.metric}={observed:g} {self.op} {self.value:g} → {self.severity}"


class Classification(BaseModel):
    """The severity an incident gets, and every reason for it (most severe first)."""

    model_config = ConfigDict(frozen=True)

    severity: Severity
    reasons: list[str] = Field(description="One sentence per alert/metric that matched")
    matched: list[str] = Field(description="Every rule that matched, with the observed value")


def _rule(metric: str, op: str, value: float, severity: Severity, reason: str) -> SeverityRule:
    return SeverityRule(metric=metric, op=op, value=value, severity=severity, reason=reason)


P0, P1, P2 = Severity.P0, Severity.P1, Severity.P2
# Bands are written as lower bounds; the most severe match per metric gives the reason.
# Where a seed range shares an end ("5-10%" and "1-5%"), the end goes to the more severe band.
DEFAULT_RULES: list[SeverityRule] = [
    _rule("error_rate", ">", 0.10, P0, "error rate above 10 % (seed 000 Part H: P0)"),
    _rule("error_rate", ">=", 0.05, P1, "error rate 5 % or more (seed 000 Part H: P1, 5-10 %)"),
    _rule("error_rate", ">=", 0.01, P2, "error rate 1 % or more (seed 000 Part H: P2, 1-5 %)"),
    _rule("db_reachable", "==", 0, P0, "database unreachable (seed 000 Part H: P0)"),
    _rule("video_failure_rate", ">", 0.20, P1, "video failures above 20 % (seed 000 Part H: P1)"),
    _rule("db_cpu_pct", ">", 90, P1, "database CPU above 90 % (seed 000 Part H: P1)"),
    _rule("db_cpu_pct", ">=", 70, P2, "database CPU 70 % or more (seed 000 Part H: P2, 70-90 %)"),
    _rule(
        "p95_seconds",
        ">",
        5,
        P1,
        "p95 response time above 5 s (seed 000 Incident 6 and Part H: P1)",
    ),
    _rule("p95_seconds", ">", 2, P2, "p95 response time above 2 s (seed 000 Incident 6: P2)"),
    _rule(
        "queue_depth",
        ">",
        10_000,
        P2,
        "queue depth above 10,000 (seed 004 'Email Queue Backed Up'): P2, because a backlog "
        "delays work that still gets done; seed 004's SEV-2 is for e-mail that failed to send",
    ),
    _rule(
        "memory_pct",
        ">",
        80,
        P2,
        "memory above 80 % of its limit (seed 000 Incident 4: P2 while isolated, "
        "P1 once the service is degraded)",
    ),
]


def severity_for_metric(
    metric: str, value: float, rules: Sequence[SeverityRule] = DEFAULT_RULES
) -> tuple[Severity | None, str | None]:
    """The most severe rule this one number crosses, as (severity, reason); (None, None) if none."""
    hits = [rule for rule in rules if rule.metric == metric and rule.matches(value)]
    if not hits:
        return None, None
    best = min(hits, key=lambda rule: rule.severity.rank)
    return best.severity, best.reason


def classify(
    alert: Alert | None = None,
    metrics: Mapping[str, float] | None = None,
    rules: Sequence[SeverityRule] = DEFAULT_RULES,
    default: Severity = Severity.P2,
) -> Classification:
    """Classifies an incident: the most severe of what the alert says and the rules it crosses.

    ``metrics`` adds to (and overrides) the alert's own. ``reasons`` holds the alert's stated
    severity and, per metric, the most severe rule crossed; ``matched`` lists every rule crossed.
    """
    observed = {**(alert.metrics if alert else {}), **(metrics or {})}
    found: list[tuple[Severity, str]] = []
    matched: list[tuple[Severity, str]] = []
    if alert is not None and alert.severity is not None:
        stated = _stated(alert)
        found.append((alert.severity, f"alert says {alert.severity.label.lower()} ({stated})"))
        matched.append((alert.severity, f"alert {stated} → {alert.severity}"))
    best_per_metric: dict[str, SeverityRule] = {}
    for rule in rules:
        value = observed.get(rule.metric)
        if value is None or not rule.matches(float(value)):
            continue
        matched.append((rule.severity, rule.describe(float(value))))
        best = best_per_metric.get(rule.metric)
        if best is None or rule.severity.more_severe_than(best.severity):
            best_per_metric[rule.metric] = rule
    found += [(rule.severity, rule.reason) for rule in best_per_metric.values()]
    if not found:
        return Classification(
            severity=default, reasons=[f"no rule matched; default {default}"], matched=[]
        )
    # sorted() is stable: among equals the alert's own word comes first, then rule order.
    found.sort(key=lambda item: item[0].rank)
    matched.sort(key=lambda item: item[0].rank)
    return Classification(
        severity=found[0][0],
        reasons=[reason for _, reason in found],
        matched=[text for _, text in matched],
    )


def _stated(alert: Alert) -> str:
    """Where the alert states its severity, e.g. ``label severity=critical``."""
    if alert.source == "sentry" and "level" in alert.labels:
        return f"Sentry level {alert.labels['level']}"
    for key in ("severity", "priority", "level", "urgency"):
        raw = alert.labels.get(key)
        if raw is not None and Severity.parse(raw) is alert.severity:
            return f"label {key}={raw}"
    return f"{alert.source} severity {alert.severity}"


def suggested_severity(findings: Iterable[Finding]) -> Severity | None:
    """The most severe severity the problem findings (warn, critical) suggest; None if none.

    The one rule for "what severity do these findings say": a runbook report's severity, a
    drill scorecard's and the raise an incident gets from its runbooks all come from it.
    """
    found = [f.severity for f in findings if f.status.is_problem and f.severity is not None]
    return min(found, key=lambda s: s.rank, default=None)


def incident_severity(declared: Severity, findings: Iterable[Finding]) -> Severity:
    """The declared severity, raised (never lowered) to what the findings suggest."""
    return declared.raise_to(suggested_severity(findings))
