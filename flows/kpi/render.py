"""The report as markdown: the Prefect artifact, ``-o FILE.md`` and the terminal print the same.

Tables are padded so they also read in a terminal; charts are sparklines of incidents per day.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from checks.sla import UPDATE_GAP_FACTOR
from checks.trend import sparkline
from flows.kpi.figures import Report, RunbookKpis, Stat, Tally

__all__ = ["duration", "period", "report_markdown", "table"]


def duration(seconds: float | None) -> str:
    """42s, 4m 10s, 2h 05m, 3d 04h; — for nothing."""
    if seconds is None:
        return "—"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def period(seconds: float) -> str:
    """30 days, 1 day, 12 hours, 45 minutes: how far back a report or handoff looks."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = round(seconds / size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{round(seconds)} seconds"


def _cell(value: object) -> str:
    return str(value).replace("|", "/").replace("\n", " ")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A markdown table padded to its widest cells."""
    cells = [[_cell(h) for h in headers], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    return [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [
        line(row) for row in cells[1:]
    ]


def _stat(stat: Stat) -> str:
    return "—" if stat.n == 0 else f"{duration(stat.median)} / {duration(stat.p90)}"


def _tally(tally: Tally) -> str:
    return f"{tally.met} / {tally.missed} / {tally.pending}"


def _pct(part: int, whole: int) -> str:
    return "—" if whole == 0 else f"{100 * part / whole:.0f} %"


def _when(at: datetime | None) -> str:
    return "—" if at is None else f"{at:%Y-%m-%d %H:%M}"


def _drill(row: RunbookKpis) -> list[str]:
    d = row.drill
    if d.scenario is None:
        return ["—", "—", "—", "no drill scenario"]
    if d.last_at is None:
        return ["never", "—", "—", "STALE (no drill on record)"]
    status = "ok"
    if d.failing and d.stale:
        status = "STALE, FAILING"
    elif d.failing:
        status = "FAILING"
    elif d.stale:
        status = "STALE"
    return [_when(d.last_at), d.result or "—", duration(d.age_s), status]


def report_markdown(report: Report) -> str:
    """Every section of the report, in the seeds' order: respond, tell, learn, practise."""
    back = period((report.generated_at - report.since).total_seconds())
    scope = f"service {report.service}" if report.service else "all services"
    out = [
        f"# On-call report — last {back}",
        "",
        f"{_when(report.since)} → {_when(report.generated_at)} UTC · {scope}",
        "",
        "## Response times by severity",
        "",
        "Median / p90 from opening; met / missed / pending against each incident's targets"
        " (`sla:` in oncall.yaml, checks/sla.py). A resolution counts as the acknowledgement"
        " of a page nobody acknowledged.",
        "",
    ]
    sevs = report.severities
    out += table(
        [
            "sev",
            "incidents",
            "open",
            "MTTA",
            "ack target",
            "ack met/missed/pending",
            "MTTR",
            "resolve target",
            "resolve met/missed/pending",
        ],
        [
            [
                s.severity,
                s.incidents,
                s.open,
                _stat(s.ack),
                duration(s.ack_target_s),
                _tally(s.ack_sla),
                _stat(s.resolve),
                duration(s.resolve_target_s),
                _tally(s.resolve_sla),
            ]
            for s in sevs
        ],
    )
    out += ["", "Incidents opened per day:", ""]
    out += table(
        ["sev", "per day", "total", "busiest day"],
        [
            [s.severity, f"`{sparkline(s.per_day, width=60)}`", s.incidents, max(s.per_day or [0])]
            for s in sevs
        ],
    )
    out += [
        "",
        "## Keeping people informed",
        "",
        "An update is a message that reached Slack or the status page. Cadence: each"
        " incident's longest silence after its first update, kept while under"
        f" {UPDATE_GAP_FACTOR:g} × the configured interval (`notifications.update_every`;"
        " seed 002: every 15–30 min).",
        "",
    ]
    out += table(
        [
            "sev",
            "first update",
            "target",
            "met/missed/pending",
            "no update sent",
            "longest silence",
            "interval",
            "kept/broken/open",
            "not known",
        ],
        [
            [
                s.severity,
                _stat(s.first_update),
                duration(s.first_update_target_s),
                _tally(s.first_update_sla),
                s.silent,
                _stat(s.cadence),
                duration(s.cadence_every_s),
                _tally(s.cadence_sla),
                s.updates_unknown,
            ]
            for s in sevs
        ],
    )
    rec = report.recurrence
    verdict = ""
    if rec.rate is not None:
        verdict = " — met" if rec.rate < rec.target else " — MISSED"
    rate = "—" if rec.rate is None else f"{100 * rec.rate:.1f} %"
    out += [
        "",
        "## Recurrence",
        "",
        f"{rec.recurrent} of {rec.incidents} incidents repeat one from the 30 days before them"
        f" (same fingerprint, or same service and runbook): {rate}; target under"
        f" {100 * rec.target:g} %{verdict}.",
    ]
    if rec.repeats:
        out += [""] + table(
            ["incident", "repeats", "why", "days apart"],
            [[r.incident, r.earlier, r.why, f"{r.days_apart:.1f}"] for r in rec.repeats[:15]],
        )
        if len(rec.repeats) > 15:
            out.append(f"\n… and {len(rec.repeats) - 15} more.")
    pm = report.postmortems
    out += [
        "",
        "## Post-mortems (P0/P1)",
        "",
        f"{pm.due} resolved P0/P1 incidents: post-mortem drafted for {pm.drafted}"
        f" ({_pct(pm.drafted, pm.due)}), completed for {pm.completed}"
        f" ({_pct(pm.completed, pm.due)}; no blank of the draft left); target 100 %."
        f" Open action items: {pm.open_items}.",
    ]
    if pm.missing:
        out.append(f"\nNo post-mortem: {', '.join(pm.missing[:20])}")
    if pm.incomplete:
        out.append(f"\nStill to complete: {', '.join(pm.incomplete[:20])}")
    ap = report.approvals
    immediate = ", ".join(f"{k} {v}" for k, v in sorted(ap.immediate.items())) or "none"
    out += [
        "",
        "## Approvals",
        "",
        f"{ap.gates} gates opened: {ap.decided} decided, {ap.waiting} still waiting."
        f" Time waiting for a decision (median / p90): {_stat(ap.wait)}.",
        f"Approved {ap.approved}, rejected {ap.rejected}, timed out {ap.timed_out},"
        f" cancelled by their incident {ap.cancelled}. Decided without waiting: {immediate}.",
        "",
        "## Runbooks: remediations and drills",
        "",
        f"Remediations are runs whose approved actions ran; a drill is stale after"
        f" {duration(report.freshness_s)} (`drills.freshness`).",
        "",
    ]
    out += table(
        [
            "runbook",
            "runs",
            "remediations",
            "fixed",
            "mitigated",
            "not recovered",
            "rejected",
            "timed out",
            "last drill",
            "result",
            "age",
            "drill",
        ],
        [
            [
                r.runbook,
                r.runs,
                r.remediations,
                r.fixed,
                r.mitigated,
                r.not_recovered,
                r.rejected,
                r.timed_out,
                *_drill(r),
            ]
            for r in report.runbooks
        ],
    )
    if report.notes:
        out += ["", "## What these figures cannot see", ""] + [f"- {n}" for n in report.notes]
    return "\n".join(out) + "\n"
