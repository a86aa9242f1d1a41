"""The handoff as markdown (terminal, ``-o FILE.md``), in the seed's order, ending with the ack."""

from __future__ import annotations

from datetime import datetime

from flows.kpi.handoff import RECEIVER_SOURCES, Handoff
from flows.kpi.render import duration, period, table

__all__ = ["handoff_markdown"]


def _ago(at: datetime | None, now: datetime) -> str:
    return (
        "never"
        if at is None
        else f"{at:%Y-%m-%d %H:%M} UTC ({duration((now - at).total_seconds())} ago)"
    )


def handoff_markdown(h: Handoff) -> str:
    now = h.generated_at
    back = period((now - h.since).total_seconds())
    out = [f"# On-call handoff — {now:%Y-%m-%d %H:%M} UTC", "", "## Current issues", ""]
    if h.open:
        out += table(
            ["incident", "sev", "service", "status", "open for", "SLA", "acked", "title"],
            [
                [
                    i.id,
                    i.severity,
                    i.service,
                    i.status,
                    duration(i.age_s),
                    i.sla,
                    "yes" if i.acked else "NO",
                    i.title,
                ]
                for i in h.open
            ],
        )
    else:
        out.append("No open incident.")
    out += [""]
    if h.waiting:
        out += ["Waiting for approval (`oncall approve RUN --as NAME`):", ""]
        out += table(
            ["run", "runbook", "incident", "plan", "risk", "waiting", "times out"],
            [
                [
                    g.run_id[:8],
                    g.runbook,
                    g.incident or "—",
                    g.plan,
                    g.risk or "—",
                    duration((now - g.waiting_since).total_seconds()) if g.waiting_since else "—",
                    f"{g.timeout_at:%H:%M} UTC" if g.timeout_at else "—",
                ]
                for g in h.waiting
            ],
        )
    else:
        out.append("No gate is waiting for a decision.")
    out += ["", f"## Recent incidents (last {back})", ""]
    if h.recent:
        out += table(
            [
                "incident",
                "sev",
                "service",
                "status",
                "resolved in",
                "SLA",
                "runbooks",
                "open action items",
            ],
            [
                [
                    i.id,
                    i.severity,
                    i.service,
                    i.status,
                    duration(i.resolved_in_s),
                    i.sla,
                    "; ".join(i.outcomes) or "—",
                    len(i.open_items),
                ]
                for i in h.recent
            ],
        )
        items = [(i.id, item) for i in [*h.open, *h.recent] for item in i.open_items]
        if items:
            out += ["", "Open action items (post-mortems):", ""]
            out += [f"- {inc}: {item}" for inc, item in items[:30]]
            if len(items) > 30:
                out.append(f"- … and {len(items) - 30} more")
    else:
        out.append("No incident in this period.")
    out += ["", "## Runbooks to look at", ""]
    attention = h.attention
    if attention:
        for name, d in attention.items():
            why = []
            if d.last_at is None:
                why.append("never drilled")
            elif d.stale:
                why.append(
                    f"last drill {duration(d.age_s)} ago (freshness {duration(h.freshness_s)})"
                )
            if d.failing:
                why.append(f"last drill {d.result}")
            out.append(f"- {name}: {'; '.join(why)} — `oncall drill {name}`")
    else:
        out.append("Every runbook with a drill passed it recently.")
    undrilled = [n for n, d in h.drills.items() if d.scenario is None]
    if undrilled:
        out.append(f"\nNo drill scenario for: {', '.join(undrilled)}.")
    a = h.alerting
    out += ["", "## Is alerting working?", ""]
    sources = ", ".join(
        f"{src} {_ago(at, now)}"
        for src, at in sorted(a.last_alert.items(), key=lambda kv: kv[1], reverse=True)
    )
    received = [at for src, at in a.last_alert.items() if src in RECEIVER_SOURCES]
    out += [
        f"- Receiver: {a.receiver}; last webhook alert that opened an incident:"
        f" {_ago(max(received, default=None), now)}",
        f"- Alerts by source: {sources or 'none on record'}",
        f"- Last alert recorded on an incident's timeline: {_ago(a.last_joined, now)}",
        f"- Health sweep: last ran {_ago(a.sweep_last_run, now)}"
        + (f" ({a.sweep_last_state.lower()})" if a.sweep_last_state else "")
        + f"; last completed {_ago(a.sweep_last_completed, now)}; {a.sweep_schedule}",
        f"- Notification failures in the period: {len(a.failures)}",
    ]
    for f in a.failures[-10:]:
        out.append(f"  - {f.at:%m-%d %H:%M} {f.incident or ''} {f.channel}: {f.text}")
    out += ["", "## Handoff", ""]
    if h.last_ack:
        at = str(h.last_ack.get("at"))[:16].replace("T", " ")
        out.append(f"Last handoff acknowledged by {h.last_ack.get('by')} at {at} UTC.")
    out.append("To take over, acknowledge this handoff: `oncall handoff --ack --as NAME`")
    return "\n".join(out) + "\n"
