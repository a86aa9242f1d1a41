"""Slack Block Kit builders: the seeds' incident messages and the approval request.

The builders are pure functions of plain values. Block Kit limits (50 blocks, 3000-char
sections, 150-char headers, 75-char buttons): https://api.slack.com/reference/block-kit/blocks
and .../block-elements#button.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from integrations._severity import Severity
from integrations.errors import ConfigError

__all__ = [
    "SEVERITY_LABELS",
    "Decision",
    "approval_decided",
    "approval_request",
    "incident_declared",
    "incident_resolved",
    "incident_update",
    "parse_approval_value",
]

SEVERITY_LABELS = {s.value: s.label for s in Severity}
Decision = Literal["approve", "reject"]


def _esc(text: object) -> str:
    # mrkdwn control characters; Slack asks for exactly these three to be escaped.
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _when(value: datetime | str | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.isoformat(sep=" ", timespec="minutes")
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return str(value)


def _duration(value: timedelta | str | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    minutes = int(value.total_seconds() // 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


def _severity(severity: str) -> str:
    key = str(severity).upper()
    return f"{key} - {SEVERITY_LABELS[key]}" if key in SEVERITY_LABELS else str(severity)


def _header(text: str) -> dict[str, Any]:
    return {"type": "header", "text": {"type": "plain_text", "text": _cut(text, 150)}}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _cut(text, 3000)}}


def _fields(pairs: Sequence[tuple[str, object]]) -> dict[str, Any]:
    fields = [{"type": "mrkdwn", "text": _cut(f"*{k}:*\n{_esc(v)}", 2000)} for k, v in pairs]
    return {"type": "section", "fields": fields[:10]}


def _bullets(title: str, items: Sequence[str], numbered: bool = False) -> dict[str, Any]:
    lines = [f"{i}. {_esc(x)}" if numbered else f"• {_esc(x)}" for i, x in enumerate(items, 1)]
    return _section(f"*{title}*\n" + ("\n".join(lines) or "—"))


def _links(links: Mapping[str, str] | None) -> list[dict[str, Any]]:
    if not links:
        return []
    text = "  ·  ".join(f"<{url}|{_esc(label)}>" for label, url in links.items())
    return [{"type": "context", "elements": [{"type": "mrkdwn", "text": _cut(text, 3000)}]}]


def incident_declared(
    incident_id: str,
    severity: str,
    service: str,
    title: str,
    *,
    started_at: datetime | str | None = None,
    impact: Sequence[str] = (),
    on_call: str | None = None,
    channel: str | None = None,
    next_steps: Sequence[str] = (),
    next_update: datetime | str | None = None,
    links: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The seeds' 🚨 INCIDENT DECLARED message."""
    pairs: list[tuple[str, object]] = [
        ("Severity", _severity(severity)),
        ("Service", service),
        ("Issue", title),
        ("Started", _when(started_at)),
    ]
    pairs += [("On-Call", on_call)] if on_call else []
    pairs += [("Incident Channel", channel)] if channel else []
    steps = list(next_steps) or ["Investigating root cause"]
    if next_update is not None:
        steps.append(f"Next update: {_when(next_update)}")
    blocks = [
        _header(f"🚨 INCIDENT DECLARED — {incident_id}"),
        _fields(pairs),
        _bullets("Next Steps", steps, numbered=True),
        _bullets("Impact", list(impact) or ["Under assessment"]),
        *_links(links),
    ]
    text = f"🚨 INCIDENT DECLARED {incident_id}: {_severity(severity)} {service} — {title}"
    return {"text": text, "blocks": blocks}


def incident_update(
    incident_id: str,
    status: str,
    *,
    severity: str | None = None,
    service: str | None = None,
    at: datetime | str | None = None,
    elapsed: timedelta | str | None = None,
    actions: Sequence[str] = (),
    impact: str | None = None,
    next_update: datetime | str | None = None,
    links: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The seeds' 🔄 INCIDENT UPDATE message (every 5/15/30 min by severity)."""
    when = _when(at) + (f" ({_duration(elapsed)} elapsed)" if elapsed is not None else "")
    pairs: list[tuple[str, object]] = [("Status", status.capitalize()), ("Time", when)]
    pairs += [("Severity", _severity(severity))] if severity else []
    pairs += [("Service", service)] if service else []
    blocks = [
        _header(f"🔄 INCIDENT UPDATE — {incident_id}"),
        _fields(pairs),
        _bullets("Investigation / Actions", list(actions) or ["No change since last update"]),
        _fields([("Next Update", _when(next_update)), ("Impact", impact or "—")]),
        *_links(links),
    ]
    return {"text": f"🔄 INCIDENT UPDATE {incident_id}: {status}", "blocks": blocks}


def incident_resolved(
    incident_id: str,
    *,
    severity: str,
    resolved_at: datetime | str | None = None,
    duration: timedelta | str | None = None,
    root_cause: str = "Under investigation",
    resolution: Sequence[str] = (),
    verification: Sequence[str] = (),
    postmortem: str | None = None,
    links: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The seeds' ✅ INCIDENT RESOLVED message."""
    pairs: list[tuple[str, object]] = [
        ("Resolved At", _when(resolved_at)),
        ("Duration", _duration(duration)),
        ("Severity", _severity(severity)),
    ]
    blocks = [
        _header(f"✅ INCIDENT RESOLVED — {incident_id}"),
        _fields(pairs),
        _section(f"*Root Cause*\n{_esc(root_cause)}"),
        _bullets("Resolution", list(resolution) or ["—"]),
        _bullets("Verification", list(verification) or ["—"]),
        *([_section(f"*Post-Mortem*\n{_esc(postmortem)}")] if postmortem else []),
        *_links(links),
    ]
    return {"text": f"✅ INCIDENT RESOLVED {incident_id}", "blocks": blocks}


def approval_request(
    flow_run_id: str,
    *,
    runbook: str,
    action: str,
    risk: str,
    severity: str | None = None,
    incident_id: str | None = None,
    preview: Sequence[str] = (),
    evidence: Sequence[str] = (),
    requested_by: str | None = None,
    expires_at: datetime | str | None = None,
    links: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """An approval request whose Approve/Reject buttons carry the flow run id."""
    if not flow_run_id or len(flow_run_id) > 200:
        raise ConfigError("flow_run_id must be 1-200 characters to fit a Slack action_id")
    pairs: list[tuple[str, object]] = [("Runbook", runbook), ("Risk", risk)]
    pairs += [("Severity", _severity(severity))] if severity else []
    pairs += [("Incident", incident_id)] if incident_id else []
    pairs += [("Requested by", requested_by)] if requested_by else []
    pairs += [("Decide before", _when(expires_at))] if expires_at else []
    shown = "\n".join(preview) or "(no preview)"
    blocks: list[dict[str, Any]] = [
        _header("🔐 APPROVAL NEEDED"),
        _section(f"*{_esc(action)}*"),
        _fields(pairs),
        _section(f"*Exactly what will change*\n```{_cut(_esc(shown), 2900)}```"),
    ]
    if evidence:
        blocks.append(_bullets("Evidence", list(evidence)))
    blocks += _links(links)
    approve = _button("Approve", "approve", flow_run_id, "primary")
    if risk.lower() == "destructive":
        approve["confirm"] = {
            "title": {"type": "plain_text", "text": "Approve a destructive action?"},
            "text": {"type": "mrkdwn", "text": _cut(_esc(action), 300)},
            "confirm": {"type": "plain_text", "text": "Approve"},
            "deny": {"type": "plain_text", "text": "Cancel"},
        }
    blocks.append(
        {
            "type": "actions",
            "block_id": _cut(f"approval:{flow_run_id}", 255),
            "elements": [approve, _button("Reject", "reject", flow_run_id, "danger")],
        }
    )
    return {"text": f"🔐 Approval needed: {action} ({runbook}, {risk})", "blocks": blocks}


def _button(label: str, decision: Decision, flow_run_id: str, style: str) -> dict[str, Any]:
    value = f"{decision}:{flow_run_id}"
    return {
        "type": "button",
        "text": {"type": "plain_text", "text": label},
        "style": style,
        "action_id": value,
        "value": value,
    }


def approval_decided(
    flow_run_id: str, *, decision: Decision, approver: str, reason: str | None = None
) -> dict[str, Any]:
    """The message that replaces the buttons once someone has decided."""
    icon, word = ("✅", "Approved") if decision == "approve" else ("⛔", "Rejected")
    text = f"{icon} {word} by {_esc(approver)} (run `{_esc(flow_run_id)}`)"
    text += f"\n>{_esc(reason)}" if reason else ""
    return {"text": f"{word} by {approver}", "blocks": [_section(text)]}


def parse_approval_value(value: str) -> tuple[Decision, str]:
    """Splits a button value ``approve:<run id>`` into (decision, flow run id)."""
    decision, _, run_id = value.partition(":")
    if run_id and decision == "approve":
        return "approve", run_id
    if run_id and decision == "reject":
        return "reject", run_id
    raise ConfigError(f"not an approval button value: {value[:80]!r}")
