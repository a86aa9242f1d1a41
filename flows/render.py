"""Terminal rendering with rich: findings as they arrive, the plan, the report."""

from __future__ import annotations

from rich.console import Console, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from checks.findings import Finding, Status
from runbooks.engine.model import ActionResult, Approval, Plan, RunbookReport
from runbooks.engine.report import spared_label

__all__ = [
    "approval_line",
    "finding_line",
    "plan_panel",
    "report_summary",
    "result_line",
    "scorecard_panel",
]

STYLE = {
    Status.OK: ("✔", "green"),
    Status.UNKNOWN: ("?", "dim"),
    Status.WARN: ("!", "yellow"),
    Status.CRITICAL: ("✖", "bold red"),
    Status.ERROR: ("✖", "magenta"),
}


def finding_line(finding: Finding, prefix: str = "") -> Text:
    icon, style = STYLE[finding.status]
    line = Text(f"{prefix}{icon} ", style=style)
    line.append(f"{finding.check:<24}", style="bold")
    line.append(f" {finding.summary}")
    if finding.severity:
        line.append(f"  [{finding.severity}]", style=style)
    if finding.evidence.get("sparkline"):
        line.append(f"\n{'':>27}{finding.evidence['sparkline']}", style="cyan")
    return line


def plan_panel(plan: Plan) -> Panel:
    """The plan: each action with its exact preview and undo, then what it spares and why."""
    if not plan.actions:
        spared = [Text("Nothing to change.")] + _spared_lines(plan)
        title = f"Plan on {plan.target}" if plan.spared else "Plan"
        return Panel(Text("\n").join(spared), title=title, border_style="green")
    parts: list[Text] = []
    for action in plan.actions:
        style = {"safe": "green", "risky": "yellow", "destructive": "bold red"}[action.risk]
        head = Text(f"{action.title}", style="bold")
        head.append(f"  risk: {action.risk}", style=style)
        parts += [head, Text(action.preview + "\n")]
        if action.undo:
            parts.append(Text(f"undo: {action.undo}\n", style="dim"))
    parts += _spared_lines(plan)
    return Panel(
        Text("\n").join(parts), title=f"Plan {plan.id} on {plan.target}", border_style="yellow"
    )


def _spared_lines(plan: Plan) -> list[Text]:
    return [
        Text(f"left alone: {spared_label(spared)}: {spared.get('reason')}", style="dim")
        for spared in plan.spared
    ]


def approval_line(approval: Approval) -> Text:
    verdict = approval.verdict
    style = "green" if verdict == "approved" else "red" if approval.counted else "yellow"
    line = Text(f"Plan {verdict}", style=f"bold {style}")
    if not approval.counted:  # a refused or uncounted decision: say whose, and why
        line = Text(f"Decision {verdict}", style=f"bold {style}")
    line.append(f" by {approval.approver} via {approval.channel}")
    if approval.identity:
        line.append(f" (identity {approval.identity})", style="dim")
    if approval.why or approval.reason:
        line.append(f": {approval.why or approval.reason}")
    return line


def result_line(result: ActionResult) -> Text:
    style = {"done": "green", "partial": "yellow", "skipped": "yellow", "failed": "red"}
    line = Text(f"→ {result.title}: ", style="bold")
    line.append(f"{result.status}", style=style[result.status])
    line.append(f" — {result.detail}")
    for item in result.items:
        line.append(f"\n    {item.get('outcome', item)}", style="dim")
    return line


def report_summary(console: Console, report: RunbookReport) -> None:
    style = {0: "bold green", 1: "bold yellow", 3: "bold magenta"}.get(report.exit_code, "bold")
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_row("outcome", Text(report.outcome.value.replace("_", " "), style=style))
    if report.severity:
        table.add_row("severity", str(report.severity))
    if report.flow_run_id:
        table.add_row("flow run", report.flow_run_id)
    unreachable = [f.check for f in report.findings if f.unreachable]
    if unreachable:  # said once above; here, what it cost
        table.add_row("not run", f"{len(unreachable)} check(s): the target did not answer")
    for name, seconds in report.timings.items():
        table.add_row(name.replace("_", " "), f"{seconds:.2f} s")
    for note in report.notes:
        table.add_row("note", note)
    console.print(Panel(table, title=f"{report.runbook} on {report.target}", border_style=style))


def scorecard_panel(card) -> Panel:
    table = Table(show_header=True, box=None)
    for column in ("phase", "seconds from fault", "SLA", "verdict"):
        table.add_column(column)
    unreached = [phase for phase in card.verdicts if phase not in card.times_s]
    for phase, seconds in [*card.times_s.items(), *((p, None) for p in unreached)]:
        limit = card.sla_s.get(phase)
        verdict = card.verdicts.get(phase, "")
        style = {"met": "green", "breached": "red", "pending": "yellow"}.get(verdict, "")
        table.add_row(
            phase,
            "not reached" if seconds is None else f"{seconds:.2f}",
            f"{limit:.0f} s" if limit else "",
            Text(verdict, style=style),
        )
    lines: list[RenderableType] = [
        table,
        Text(f"outcome: {card.outcome}   severity: {card.severity}"),
    ]
    lines += [Text(f"action: {a}") for a in card.actions]
    lines += [Text(f"approval: {a}") for a in card.approvals]
    if card.flow_run_id:
        lines.append(Text(f"flow run: {card.flow_run_id}", style="dim"))
    from rich.console import Group

    verdict = (
        Text("PASSED", style="bold green") if card.passed else Text("FAILED", style="bold red")
    )
    return Panel(
        Group(*lines),
        title=Text.assemble(f"Drill {card.scenario}: ", verdict),
        border_style="green" if card.passed else "red",
    )
