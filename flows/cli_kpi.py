"""``oncall report`` and ``oncall handoff``: the KPIs and the on-call handoff, read from Prefect.

Registered on the ``oncall`` app by ``flows.cli`` (:func:`register`); the shared helpers and
options come from ``flows.cli_base``.
Both read the Prefect REST API directly (no ``import prefect``), like ``oncall incidents``.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli_base import ConfigOpt, JsonOpt, _api, _approver, _errors, _print_json
from integrations.errors import ConfigError

__all__ = ["handoff_cmd", "register", "report_cmd"]

OutputOpt = Annotated[
    str | None, typer.Option("-o", "--output", help="Write the markdown to this file")
]


def _since(text: str) -> float:
    from flows.config import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"--since: {exc}") from None
    if not seconds or seconds <= 0 or seconds > 400 * 86400:
        raise ConfigError(f"--since {text!r}: give a period from 1s to 400d, e.g. 7d or 12h")
    return float(seconds)


def _config(path: str | None) -> Any:
    from flows.config_load import find_config, load_config

    return load_config(find_config(path))


def _write(output: str, text: str) -> None:
    try:
        Path(output).write_text(text)
    except OSError as exc:
        raise ConfigError(f"cannot write {output}: {exc.strerror}") from None
    sys.stdout.write(f"wrote {output}\n")


def report_cmd(
    since: Annotated[str, typer.Option(help="The period: 30d, 7d, 12h …")] = "30d",
    service: Annotated[str | None, typer.Option(help="Only this service's incidents")] = None,
    json_out: JsonOpt = False,
    output: OutputOpt = None,
    publish: Annotated[
        bool, typer.Option("--publish", help="Also publish it as the Prefect artifact")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Prints the on-call KPIs: MTTA/MTTR vs SLA, updates, recurrence, post-mortems, drills."""
    with _errors():
        seconds = _since(since)
        cfg = _config(config)
        from flows.kpi.build import REPORT_KEY, build_report, summary_line
        from flows.kpi.render import report_markdown

        now = datetime.now(UTC)
        with _api() as api:
            report = build_report(
                api, cfg, since=now - timedelta(seconds=seconds), now=now, service=service
            )
            text = report_markdown(report)
            if publish:
                api.create_artifact(
                    {
                        "key": REPORT_KEY,
                        "type": "markdown",
                        "data": text,
                        "description": summary_line(report),
                    }
                )
        if output:
            _write(output, text)
        if json_out:
            _print_json(report.model_dump(mode="json"))
        elif not output:
            sys.stdout.write(text)


def handoff_cmd(
    since: Annotated[str, typer.Option(help="How far back recent incidents go")] = "7d",
    output: OutputOpt = None,
    ack: Annotated[
        bool, typer.Option("--ack", help="Acknowledge the handoff (needs --as): an event")
    ] = False,
    as_: Annotated[str | None, typer.Option("--as", help="Your name (with --ack)")] = None,
    json_out: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Shows the on-call handoff: open issues, recent incidents, stale drills, alerting health."""
    with _errors():
        seconds = _since(since)
        who = _approver(as_, "--as")
        if ack and who is None:
            raise ConfigError("--ack needs --as NAME: who takes over")
        if who is not None and not ack:
            raise ConfigError("--as is for --ack: `oncall handoff --ack --as NAME`")
        cfg = _config(config)
        from flows.kpi.build import build_handoff
        from flows.kpi.handoff import ack_event
        from flows.kpi.handoff_render import handoff_markdown

        now = datetime.now(UTC)
        with _api() as api:
            handoff = build_handoff(api, cfg, since=now - timedelta(seconds=seconds), now=now)
            if ack and who is not None:
                from runbooks.engine.model import os_identity

                event = ack_event(handoff, who, os_identity())
                api.emit_events([event])
        text = handoff_markdown(handoff)
        if output:
            _write(output, text)
        if json_out:
            body = handoff.model_dump(mode="json")
            _print_json({**body, "acknowledged": event["payload"] if ack else None})
        elif ack:
            p = event["payload"]
            sys.stdout.write(
                f"handoff acknowledged by {who} at {now:%Y-%m-%d %H:%M} UTC:"
                f" {len(p['open_incidents'])} open incident(s),"
                f" {len(p['waiting_approvals'])} waiting approval(s),"
                f" {len(p['drills_to_look_at'])} runbook drill(s) to look at\n"
            )
        elif not output:
            sys.stdout.write(text)


def register(app: typer.Typer) -> None:
    """Adds ``report`` and ``handoff`` to the ``oncall`` app."""
    app.command("report")(report_cmd)
    app.command("handoff")(handoff_cmd)
