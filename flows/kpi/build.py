"""The report and the handoff for one configuration: the catalog, the targets, the server."""

from __future__ import annotations

from datetime import datetime

from flows.config import OncallConfig
from flows.kpi.compute import compute
from flows.kpi.facts import Snapshot
from flows.kpi.figures import Report
from flows.kpi.handoff import Handoff, read_handoff
from flows.kpi.reader import read_snapshot
from flows.kpi.render import period
from flows.prefect_api import PrefectAPI

__all__ = [
    "REPORT_KEY",
    "build_handoff",
    "build_report",
    "catalog",
    "figures",
    "summary_line",
]

REPORT_KEY = "oncall-report"  # the artifact key: its history is the weekly reports


def catalog() -> tuple[list[str], list[str]]:
    """(every runbook, every drill scenario)."""
    from flows.drills.registry import DRILLS
    from runbooks.catalog import RUNBOOKS

    return list(RUNBOOKS), list(DRILLS)


def build_report(
    api: PrefectAPI,
    config: OncallConfig,
    *,
    since: datetime,
    now: datetime,
    service: str | None = None,
) -> Report:
    runbooks, scenarios = catalog()
    snapshot = read_snapshot(
        api, since=since, now=now, runbooks=runbooks, drill_scenarios=scenarios
    )
    return figures(snapshot, config, service)


def figures(snapshot: Snapshot, config: OncallConfig, service: str | None = None) -> Report:
    """The report of a snapshot against this configuration's targets and freshness."""
    return compute(
        snapshot,
        sla_for=config.sla_for,
        update_every=config.notifications.update_every.get,
        freshness_s=config.drills.freshness,
        service=service,
    )


def build_handoff(
    api: PrefectAPI, config: OncallConfig, *, since: datetime, now: datetime
) -> Handoff:
    runbooks, scenarios = catalog()
    return read_handoff(
        api, config, since=since, now=now, runbooks=runbooks, drill_scenarios=scenarios
    )


def summary_line(report: Report) -> str:
    """One line for the artifact's description: volume, P0/P1 response, recurrence, drills."""
    incidents = sum(s.incidents for s in report.severities)
    back = period((report.generated_at - report.since).total_seconds())
    parts = [f"{back}: {incidents} incidents"]
    for s in report.severities[:2]:
        if s.incidents:
            parts.append(
                f"{s.severity} ack missed {s.ack_sla.missed}, resolve missed {s.resolve_sla.missed}"
            )
    if report.recurrence.rate is not None:
        parts.append(f"recurrence {100 * report.recurrence.rate:.1f} %")
    attention = sum(1 for r in report.runbooks if r.drill.stale or r.drill.failing)
    parts.append(f"{attention} runbook(s) with a stale or failing drill")
    return "; ".join(parts)
