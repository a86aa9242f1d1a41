"""Markdown for people: the approval request and the runbook report."""

from __future__ import annotations

from typing import Any

from checks.findings import Finding, Status
from runbooks.engine.model import Action, Plan, RunbookReport

__all__ = [
    "spared_label",
    "approval_request_markdown",
    "findings_table",
    "plan_markdown",
    "report_markdown",
]

_ICON = {
    Status.OK: "✅",
    Status.UNKNOWN: "❔",
    Status.WARN: "⚠️",
    Status.CRITICAL: "🔴",
    Status.ERROR: "❌",
}


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def findings_table(findings: list[Finding], *, icons: bool = True) -> str:
    if not findings:
        return "_no findings_\n"
    lines = ["| | check | summary | severity | ms |", "|---|---|---|---|---|"]
    for f in findings:
        # Without icons: browsers with no emoji font draw them as empty boxes.
        status = f"{_ICON[f.status]} {f.status}" if icons else f"**{str(f.status).upper()}**"
        lines.append(
            f"| {status} | {f.check} | {_cell(f.summary)} "
            f"| {f.severity or ''} | {f.duration_ms:.0f} |"
        )
    return "\n".join(lines) + "\n"


def spared_label(spared: dict[str, Any]) -> str:
    """How to name something a plan left alone: a pid, or whatever the runbook called it."""
    if "pid" in spared:
        return f"pid {spared['pid']}"
    return str(spared.get("what") or spared.get("action") or spared.get("target") or "item")


PREVIEW_WIDTH = 76  # characters: fits both Prefect UIs' artifact column at 1400 px


def wrap_preview(preview: str, width: int = PREVIEW_WIDTH) -> str:
    """The preview with long lines folded (continuations indented), nothing cut off."""
    out = []
    for line in preview.splitlines() or [""]:
        while len(line) > width:
            cut = line.rfind(" ", width // 2, width)  # at a space where there is one
            cut = cut if cut > 0 else width
            out.append(line[:cut].rstrip())
            line = "        " + line[cut:].lstrip()
        out.append(line)
    return "\n".join(out)


def evidence_list(findings: list[Finding]) -> str:
    """Findings as a list: it wraps at any width (a table's last columns get cut off)."""
    if not findings:
        return "_no findings_\n"
    lines = []
    for f in findings:
        severity = f" (suggests {f.severity})" if f.severity else ""
        lines.append(f"- **{str(f.status).upper()}** `{f.check}`: {f.summary}{severity}")
    return "\n".join(lines) + "\n"


def action_markdown(action: Action) -> str:
    preview = wrap_preview(action.preview)
    out = [f"#### {action.title} — risk: **{action.risk}**", "", "```", preview, "```"]
    if action.undo:
        out += ["", f"Undo: {action.undo}"]
    return "\n".join(out) + "\n"


def plan_markdown(plan: Plan) -> str:
    if not plan.actions:
        return "_Nothing to change._\n"
    out = [f"Plan `{plan.id}` on **{plan.target}** — overall risk **{plan.risk}**", ""]
    out += [action_markdown(a) for a in plan.actions]
    if plan.spared:
        out += ["**Deliberately left alone:**", ""]
        out += [f"- {spared_label(s)}: {s.get('reason', '')}" for s in plan.spared]
    return "\n".join(out) + "\n"


def approval_request_markdown(runbook: str, findings: list[Finding], plan: Plan) -> str:
    """The text the approver reads (Prefect UI resume form, Slack, terminal)."""
    return "\n".join(
        [
            f"**Plan:** {plan.summary} on {plan.target}",
            "",
            f"### Approval needed: {runbook} wants to change {plan.target}",
            "",
            "#### Evidence",
            evidence_list([f for f in findings if f.status is not Status.OK] or findings),
            "#### Exact changes",
            plan_markdown(plan),
            "Decide with `oncall approve <run-id> --as NAME [--reject]` (your OS user is"
            " recorded), the Slack buttons (your Slack user), or the run's **Resume** form in"
            " the Prefect UI (recorded as *identity unverified*). Nobody deciding rejects.",
        ]
    )


def report_markdown(report: RunbookReport) -> str:
    """The run's report artifact."""
    out = [
        f"# {report.runbook} on {report.target}: {report.outcome.value.replace('_', ' ')}",
        "",
        f"- Run: `{report.flow_run_id or 'local'}`",
        f"- Started: {report.started_at:%Y-%m-%d %H:%M:%S} UTC",
    ]
    if report.finished_at:
        took = (report.finished_at - report.started_at).total_seconds()
        out.append(f"- Finished: {report.finished_at:%Y-%m-%d %H:%M:%S} UTC ({took:.1f} s)")
    if report.severity:
        out.append(f"- Suggested severity: **{report.severity}**")
    out += ["", "## Findings", "", findings_table(report.findings)]
    for f in report.findings:
        if f.evidence.get("sparkline"):
            out += [f"`{f.check}`: `{f.evidence['sparkline']}`", ""]
    if report.plan is not None:
        out += ["## Plan", "", plan_markdown(report.plan)]
    if report.approvals:
        out += ["## Approvals", "", "| decision | approver | channel | identity | reason | at |"]
        out.append("|---|---|---|---|---|---|")
        for a in report.approvals:
            out.append(
                f"| {a.verdict} | {_cell(a.approver)} | {a.channel} | {_cell(a.identity or '')} "
                f"| {_cell(a.why or a.reason)} | {a.decided_at:%H:%M:%S} |"
            )
        out.append("")
    if report.results:
        out += ["## Actions executed", ""]
        for r in report.results:
            out.append(f"- **{r.title}**: {r.status} — {r.detail}")
            out += [f"  - {_cell(i.get('outcome', i))}" for i in r.items]
        out.append("")
    if report.verification:
        out += ["## Verification (after)", "", findings_table(report.verification)]
    if report.timings:
        out += ["## Timings", ""]
        out += [f"- {k.replace('_', ' ')}: {v:.2f} s" for k, v in report.timings.items()]
        out.append("")
    if report.notes:
        out += ["## Notes", ""] + [f"- {n}" for n in report.notes] + [""]
    return "\n".join(out)
