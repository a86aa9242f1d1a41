"""``oncall incident open|declare``, ``incidents``, ``ack``, ``resolve``, ``postmortem``.

Registered on the ``oncall`` app by ``flows.cli``. Reading and deciding use the
Prefect REST API directly (fast); opening an incident runs its flow here.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli import (
    JsonOpt,
    PlainHelpGroup,
    _approver,
    _console,
    _ensure_server,
    _errors,
    _print_json,
    app,
)
from integrations.errors import ConfigError

incident_app = typer.Typer(
    help="Open or declare incidents.",
    no_args_is_help=True,
    rich_markup_mode=None,
    cls=PlainHelpGroup,
)
app.add_typer(incident_app, name="incident")

ConfigOpt = Annotated[
    str | None,
    typer.Option("--config", "-c", help="oncall.yaml (default: $ONCALL_CONFIG or ./oncall.yaml)"),
]


def _api():
    from flows.prefect_api import PrefectAPI
    from flows.server import DEFAULT_API_URL

    return PrefectAPI(os.environ.get("PREFECT_API_URL", DEFAULT_API_URL))


def _read_payload(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read alert file {source}: {exc.strerror}") from None


def _open(
    alerts: list,
    config_path: str | None,
    approve_as: str | None,
    json_out: bool,
    detach_as: list[str] | None = None,
) -> None:
    """Joins or opens incidents for the alerts. ``detach_as``: the command that opens them
    in a detached process, followed from here (a person at a terminal, not ``--json``)."""
    from flows.config import find_config, load_config
    from flows.intake import find_open, group, send_control

    cfg = load_config(find_config(config_path))
    console = _console(json_out)
    _ensure_server(console)
    results: list[dict[str, Any]] = []
    to_open = []
    with _api() as api:
        for alerts_of_service in group(alerts):
            head = alerts_of_service[0]
            existing = find_open(api, head)
            if existing is not None:
                for alert in alerts_of_service:
                    send_control(
                        api,
                        existing["id"],
                        {"kind": "alert", "alert": alert.model_dump(mode="json")},
                    )
                summary = _summary(existing)
                results.append({**summary, "joined": len(alerts_of_service)})
                console.print(
                    f"joined {summary['id']} ({summary['title']}): "
                    f"{len(alerts_of_service)} alert(s)"
                )
                continue
            firing = [a for a in alerts_of_service if a.status == "firing"]
            if not firing:
                console.print(f"no open incident for resolved alert {head.title!r}: ignored")
                continue
            if _served(api) and approve_as is None:
                results.append(_hand_over(api, firing, config_path, console))
                continue
            to_open.append(firing)
    if to_open and detach_as is not None and not json_out and not results:
        _follow_detached(detach_as, [g[0].fingerprint for g in to_open], console)
    if to_open:
        results += _run_incidents(to_open, cfg, approve_as, console, json_out)
    if json_out:
        _print_json(results)


def _follow_detached(argv: list[str], fingerprints: list[str], console) -> None:
    """Opens the incident in its own process and follows it here; exits with its outcome."""
    from datetime import UTC, datetime, timedelta

    from flows.follow import follow, start_detached
    from flows.server import DEFAULT_API_URL

    since = (datetime.now(UTC) - timedelta(seconds=2)).isoformat()
    proc, log = start_detached(argv)
    console.print(f"Opening the incident in a process of its own (pid {proc.pid}, log {log}).")
    code = follow(
        os.environ.get("PREFECT_API_URL", DEFAULT_API_URL),
        fingerprints,
        proc,
        log,
        console,
        interactive=sys.stdin.isatty(),
        since=since,
    )
    raise typer.Exit(code)


def _served(api) -> bool:
    """``oncall serve`` (or a worker) is polling the incident deployment right now."""
    deployment = api.deployment("incident/incident")
    return bool(deployment and deployment.get("status") == "READY")


def _hand_over(api, alerts: list, config_path: str | None, console) -> dict[str, Any]:
    """Opens the incident as a deployment run (oncall serve runs it) and returns at once."""
    import asyncio

    from flows.intake import open_by_deployment, send_control

    path = str(Path(config_path).resolve()) if config_path else None
    run_id = asyncio.run(open_by_deployment(alerts[0], config_path=path))
    for alert in alerts[1:]:
        send_control(api, run_id, {"kind": "alert", "alert": alert.model_dump(mode="json")})
    console.print(
        f"opened an incident for {alerts[0].service} on the served deployment"
        f" (flow run {run_id}); follow it with `oncall incidents`"
    )
    return {"flow_run_id": run_id, "service": alerts[0].service, "served": True}


def _run_incidents(groups: list[list], cfg, approve_as, console, json_out) -> list[dict]:
    import asyncio

    from prefect import tags

    from flows.execute import LiveView, quiet_prefect_console
    from flows.incident import incident
    from flows.intake import creation_tags
    from runbooks.engine import live
    from runbooks.engine.model import os_identity

    quiet_prefect_console()
    view = LiveView(
        console,
        interactive=sys.stdin.isatty() and not json_out,
        show=not json_out,
        recovery_window_s=cfg.verification.healthy_for,
        recovery_timeout_s=cfg.verification.timeout,
    )
    live.subscribe(view)

    async def main() -> list[dict]:
        runs = []
        for alerts in groups:
            with tags(*creation_tags(alerts[0])):
                runs.append(
                    incident(
                        alert=alerts[0],
                        config=cfg,
                        approve_as=approve_as,
                        requested_by=os_identity(),
                        also=alerts[1:],
                    )
                )
        return await asyncio.gather(*runs)

    try:
        return asyncio.run(main())
    finally:
        live.unsubscribe(view)
        view.close()


@incident_app.command("open")
def incident_open(
    alert: Annotated[str, typer.Option("--alert", help="Alert payload file, or - for stdin")],
    config: ConfigOpt = None,
    approve_as: Annotated[
        str | None, typer.Option("--approve-as", help="Pre-approve every runbook gate as NAME")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Opens an incident from an Alertmanager, Sentry, PagerDuty or generic alert (or joins one)."""
    with _errors():
        from integrations.alerts import parse_alerts

        approve_as = _approver(approve_as, "--approve-as")
        alerts = parse_alerts(_read_payload(alert))
        if not alerts:
            raise ConfigError("the payload holds no alert")
        _open(alerts, config, approve_as, json_out)


@incident_app.command("declare")
def incident_declare(
    service: Annotated[str, typer.Option("--service", help="Affected service")],
    title: Annotated[str, typer.Option("--title", help="What is happening, in one line")],
    severity: Annotated[str | None, typer.Option("--severity", help="P0-P3 (or SEV1…)")] = None,
    config: ConfigOpt = None,
    approve_as: Annotated[str | None, typer.Option("--approve-as")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Declares an incident by hand (a person noticed it)."""
    with _errors():
        from checks.findings import Severity
        from integrations.alerts import parse_alerts

        if severity is not None and Severity.parse(severity) is None:
            raise ConfigError(f"--severity {severity!r}: use P0-P3, SEV1-4 or critical/high/…")
        approve_as = _approver(approve_as, "--approve-as")
        body = {"service": service, "title": title, "severity": severity}
        [declared] = parse_alerts(json.dumps(body))
        argv = ["incident", "declare", "--service", service, "--title", title]
        argv += ["--severity", severity] if severity else []
        argv += ["--config", str(Path(config).resolve())] if config else []
        argv += ["--approve-as", approve_as] if approve_as else []
        declared = declared.model_copy(update={"source": "person"})
        _open([declared], config, approve_as, json_out, detach_as=argv)


def _summary(run: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    from flows.incident_model import sla_of_run, summary_from_run

    now = now or datetime.now(UTC)
    info = summary_from_run(run)
    started = info["started"]
    begin = datetime.fromisoformat(started) if started else now
    end = datetime.fromisoformat(info["ended"]) if info["ended"] else now
    info["age_s"] = round((end - begin).total_seconds())
    # The same verdict, from the same times and targets, as the incident's post-mortem.
    judged = sla_of_run(run, now)
    info["sla"] = str(judged.verdict)
    due = judged.next_due
    info["sla_due"] = due.isoformat() if due else None
    return info


@app.command("incidents")
def incidents_cmd(
    json_out: JsonOpt = False,
    limit: Annotated[int, typer.Option(help="How many recent incidents")] = 20,
) -> None:
    """Lists open and recent incidents: severity, status, age, SLA, pending approvals."""
    with _errors(), _api() as api:
        rows = []
        for run in api.incident_runs(limit=limit):
            info = _summary(run)
            if info["id"] is None:
                continue
            info["pending_approvals"] = (
                len(api.paused_children(info["id"])) if info["status"] != "resolved" else 0
            )
            rows.append(info)
        if json_out:
            _print_json(rows)
            return
        if not rows:
            _console().print("No incidents.")
            return
        from rich.table import Table

        table = Table(title="Incidents")
        for column in (
            "id",
            "sev",
            "service",
            "status",
            "age",
            "SLA",
            "acked",
            "approvals",
            "title",
        ):
            table.add_column(column, overflow="fold")
        for r in rows:
            style = {"breached": "red", "pending": "yellow"}.get(r["sla"], "")
            sla = r["sla"]
            if r["sla_due"]:
                left = datetime.fromisoformat(r["sla_due"]) - datetime.now(UTC)
                sla += f", {max(0.0, left.total_seconds()) // 60:.0f}m left"
            table.add_row(
                r["id"],
                r["severity"] or "",
                r["service"] or "",
                r["status"],
                f"{r['age_s'] // 60}m",
                f"[{style}]{sla}[/{style}]" if style else sla,
                "yes" if r["acked"] else "no",
                str(r["pending_approvals"] or ""),
                r["title"],
            )
        _console().print(table)


def _control(incident_id: str, message: dict[str, Any], verb: str) -> None:
    from flows.intake import send_control
    from runbooks.engine.model import os_identity

    with _api() as api:
        run = api.find_incident(incident_id)
        info = _summary(run)
        if info["state"] not in ("RUNNING", "PAUSED", "PENDING", "SCHEDULED"):
            raise ConfigError(f"{info['id']} is not open (status: {info['status']})")
        send_control(
            api,
            run["id"],
            {**message, "identity": os_identity(), "at": datetime.now(UTC).isoformat()},
        )
        sys.stdout.write(f"{verb} {info['id']} ({info['title']})\n")


@app.command("ack")
def ack_cmd(
    incident_id: Annotated[str, typer.Argument(help="INC-<n>")],
    as_: Annotated[str, typer.Option("--as", help="Your name")],
) -> None:
    """Acknowledges an incident (stops the acknowledgement escalation timer)."""
    with _errors():
        who = _approver(as_, "--as")
        _control(incident_id, {"kind": "ack", "by": who}, f"{who} acknowledged")


@app.command("resolve")
def resolve_cmd(
    incident_id: Annotated[str, typer.Argument(help="INC-<n>")],
    as_: Annotated[str, typer.Option("--as", help="Your name")],
    note: Annotated[str, typer.Option("--note", help="How it was resolved")] = "",
) -> None:
    """Resolves an incident by hand; plans still waiting for approval are cancelled."""
    with _errors():
        who = _approver(as_, "--as")
        _control(incident_id, {"kind": "resolve", "by": who, "note": note[:500]}, f"{who} resolved")


@app.command("postmortem")
def postmortem_cmd(
    incident_id: Annotated[str, typer.Argument(help="INC-<n>")],
    output: Annotated[str | None, typer.Option("-o", "--output", help="Write to this file")] = None,
) -> None:
    """Prints the post-mortem draft of an incident as markdown."""
    with _errors(), _api() as api:
        run = api.find_incident(incident_id)
        info = _summary(run)
        artifact = api.latest_artifact(f"{info['id'].lower()}-postmortem")
        if artifact is None:
            raise ConfigError(f"{info['id']} has no post-mortem draft yet")
        text = str(artifact.get("data") or "")
        if output:
            Path(output).write_text(text)
            sys.stdout.write(f"wrote {output}\n")
        else:
            sys.stdout.write(text + "\n")
