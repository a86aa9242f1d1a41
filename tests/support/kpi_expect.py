"""The report's figures recomputed from ground truth, on their own (not with flows/kpi).

Plain arithmetic over the times a test made or observed: the same definitions as
``oncall report`` prints them (flows/kpi/compute.py's docstring), written again so that a
mistake in one is caught by the other.
"""

from __future__ import annotations

import statistics
from datetime import datetime, timedelta

from checks.findings import Severity
from checks.sla import DEFAULT_SLA

__all__ = ["Truth", "first_and_cadence", "quantiles", "verdict"]

EVERY = {Severity.P0: 300.0, Severity.P1: 900.0, Severity.P2: 1800.0, Severity.P3: None}


def quantiles(values: list[float]) -> tuple[float | None, float | None]:
    """(median, p90) — statistics' inclusive method is linear between closest ranks."""
    if not values:
        return None, None
    if len(values) == 1:
        return values[0], values[0]
    return statistics.median(values), statistics.quantiles(values, n=10, method="inclusive")[8]


def verdict(target: float | None, took: float | None, waited: float) -> str | None:
    if target is None:
        return None
    if took is not None:
        return "met" if took <= target else "missed"
    return "missed" if waited > target else "pending"


def first_and_cadence(
    severity: Severity,
    opened: datetime,
    resolved: datetime | None,
    updates: list[datetime],
    now: datetime,
    status_update: float | None = None,
    every: float | None = None,
) -> tuple[float | None, str | None, float | None, str | None]:
    """(first update s, its verdict, longest silence s, cadence verdict) of one incident."""
    target = status_update if status_update is not None else DEFAULT_SLA[severity].status_update
    every = every if every is not None else EVERY[severity]
    end = resolved or now
    sent = sorted(u for u in updates if opened <= u <= end)
    first = (sent[0] - opened).total_seconds() if sent else None
    done = (
        first if first is not None else ((resolved - opened).total_seconds() if resolved else None)
    )
    first_verdict = verdict(target, done, (now - opened).total_seconds())
    if not sent:
        return None, first_verdict, None, None
    points = [*sent, end]
    longest = max((b - a).total_seconds() for a, b in zip(points, points[1:], strict=False))
    cadence = None
    if every:
        limit = 2 * every
        cadence = "missed" if longest > limit else ("met" if resolved is not None else "pending")
    return first, first_verdict, longest, cadence


class Truth:
    """Figures per severity, built one incident at a time."""

    def __init__(self, now: datetime, events_since: datetime) -> None:
        self.now = now
        self.events_since = events_since
        self.rows: dict[Severity, dict] = {
            s: {
                "incidents": 0,
                "open": 0,
                "ack": [],
                "resolve": [],
                "ack_sla": [],
                "resolve_sla": [],
                "first": [],
                "first_sla": [],
                "silent": 0,
                "unknown": 0,
                "gaps": [],
                "cadence_sla": [],
            }
            for s in Severity
        }

    def add(
        self,
        severity: Severity,
        opened: datetime,
        acked: datetime | None,
        resolved: datetime | None,
        updates: list[datetime],
        *,
        ack_target: float | None = None,
        resolve_target: float | None = None,
        status_update: float | None = None,
        every: float | None = None,
    ) -> None:
        row = self.rows[severity]
        sla = DEFAULT_SLA[severity]
        ack_target = ack_target if ack_target is not None else sla.acknowledge
        resolve_target = resolve_target if resolve_target is not None else sla.resolve
        row["incidents"] += 1
        row["open"] += resolved is None
        waited = (self.now - opened).total_seconds()
        ack_at = (
            acked if acked is not None and (resolved is None or acked <= resolved) else resolved
        )
        ack = (ack_at - opened).total_seconds() if ack_at else None
        if ack is not None:
            row["ack"].append(ack)
        row["ack_sla"].append(verdict(ack_target, ack, waited))
        took = (resolved - opened).total_seconds() if resolved else None
        if took is not None:
            row["resolve"].append(took)
        row["resolve_sla"].append(verdict(resolve_target, took, waited))
        if opened < self.events_since:
            row["unknown"] += 1
            return
        first, first_v, longest, cadence = first_and_cadence(
            severity, opened, resolved, updates, self.now, status_update, every
        )
        row["silent"] += first is None
        if first is not None:
            row["first"].append(first)
        row["first_sla"].append(first_v)
        if longest is not None and cadence is not None:
            row["gaps"].append(longest)
            row["cadence_sla"].append(cadence)

    @staticmethod
    def tally(verdicts: list[str | None]) -> tuple[int, int, int]:
        return verdicts.count("met"), verdicts.count("missed"), verdicts.count("pending")

    def check(self, severities: list, approx) -> None:
        """Asserts the report's per-severity figures equal these (``approx`` for seconds)."""
        for got in severities:
            want = self.rows[Severity(got["severity"])]
            sev = got["severity"]
            assert got["incidents"] == want["incidents"], sev
            assert got["open"] == want["open"], sev
            for key, values in (
                ("ack", "ack"),
                ("resolve", "resolve"),
                ("first_update", "first"),
                ("cadence", "gaps"),
            ):
                median, p90 = quantiles(want[values])
                assert got[key]["n"] == len(want[values]), (sev, key)
                assert got[key]["median"] == approx(median), (sev, key)
                assert got[key]["p90"] == approx(p90), (sev, key)
            for key, values in (
                ("ack_sla", "ack_sla"),
                ("resolve_sla", "resolve_sla"),
                ("first_update_sla", "first_sla"),
                ("cadence_sla", "cadence_sla"),
            ):
                tally = got[key]
                assert (tally["met"], tally["missed"], tally["pending"]) == self.tally(
                    want[values]
                ), (sev, key)
            assert got["silent"] == want["silent"], sev
            assert got["updates_unknown"] == want["unknown"], sev


def within(a: datetime, b: datetime, days: float) -> bool:
    return timedelta(0) < a - b <= timedelta(days=days)
