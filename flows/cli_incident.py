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
from uuid import UUID

import typer

from flows.cli_base import (
    ConfigOpt,
    JsonOpt,
    _api,
    _approver,
    _console,
    _ensure_server,
    _errors,
    _print_json,
    _print_rows,
    app,
    sub_app,
)
from integrations.errors import ConfigError

incident_app = sub_app("incident", "Open or declare incidents.")


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
    """Through the intake, as webhook alerts go: each alert joins its service's open incident
    or opens one. New incidents run on the served ``incident`` deployment when a live runner
    or worker serves it (and no --approve-as asks for this terminal), else here — or, with
    ``detach_as`` (a person at a terminal, not ``--json``), in a detached process running
    that command, followed from here."""
    import asyncio

    from flows.config_load import find_config, load_config
    from flows.intake import Intake, group, served
    from flows.spool import Spool, store_url

    path = find_config(config_path)
    cfg = load_config(path)
    if path is not None:  # its approvals: are the policy of the gates this process runs
        os.environ["ONCALL_CONFIG"] = str(path.resolve())
    console = _console(json_out)
    api_url = _ensure_server(console)
    store = Spool(store_url(cfg), dedup_window_s=cfg.receiver.dedup_window)
    with _api() as api:
        nobody = served(api, "incident/incident")
        here_ = approve_as is not None or nobody is not None
        heads = [g[0] for g in group(alerts) if any(a.status == "firing" for a in g)]
        fresh = heads and all(store.registration(a.service) is None for a in heads)
        if here_ and detach_as is not None and not json_out and fresh:  # all open anew
            store.close()
            _follow_detached(detach_as, [a.fingerprint for a in heads], console)
        here: list[tuple[Any, dict[str, str], str]] = []
        if approve_as is None and nobody is None:
            from flows.intake import open_by_deployment

            absolute = str(Path(config_path).resolve()) if config_path else None

            async def opener(alert: Any, intake: dict[str, str]) -> str:
                return await open_by_deployment(alert, intake, config_path=absolute)

        else:
            if nobody is not None and approve_as is None:
                console.print(f"[dim]{nobody}: the incident runs in this terminal[/dim]")

            async def opener(alert: Any, intake: dict[str, str]) -> str:
                run = await asyncio.to_thread(_create_run, api, alert, intake)
                here.append((alert, intake, run))
                return run

        intake = Intake(store, api_url, opener)
        results = asyncio.run(_submit_all(intake, api, alerts))
        for result in results:
            console.print(result["said"])
        if here:
            results += _run_here(here, cfg, approve_as, console, json_out)
    store.close()
    if json_out:
        _print_json([{k: v for k, v in r.items() if k != "said"} for r in results])


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


async def _submit_all(intake: Any, api: Any, alerts: list) -> list[dict[str, Any]]:
    """Stores the alerts and hands each to the intake at once, in order."""
    import asyncio

    stored = await asyncio.to_thread(intake.store.put_many, alerts)
    results = []
    for alert, (entry_id, new) in zip(alerts, stored, strict=True):
        if not new:
            said = f"{alert.title!r}: a repeat of alert {entry_id[:8]} (already handled)"
            results.append({"alert_id": entry_id, "action": "duplicate", "said": said})
            continue
        done = None
        for _ in range(40):
            [entry] = await asyncio.to_thread(intake.store.claim, intake.owner, only=entry_id) or [
                None
            ]
            done = await intake.handle(entry, api) if entry is not None else None
            if done is not None or (entry is not None and entry.error):
                break
            await asyncio.sleep(0.25)
        if done is None:
            raise ConfigError(
                f"alert {entry_id[:8]} could not be handled"
                + (f": {entry.error}" if entry and entry.error else "")
                + " (`oncall intake list` shows it)"
            )
        said = {
            "opened": f"opened an incident for {alert.service} (flow run {done.incident_run_id})",
            "joined": f"joined the open incident of {alert.service} (flow run"
            f" {done.incident_run_id})",
            "ignored": f"{alert.title!r}: {done.reason}",
        }[done.action]
        results.append({"alert_id": entry_id, **done.model_dump(), "said": said})
    return results


def _create_run(api: Any, alert: Any, intake: dict[str, str]) -> str:
    """The incident's flow run, created Pending for this process to execute."""
    from flows.intake import creation_tags

    body = {
        "parameters": {"alert": alert.model_dump(mode="json"), "intake": intake},
        "tags": creation_tags(alert),
        "state": {"type": "PENDING", "name": "Pending"},
        "idempotency_key": f"oncall-intake-{intake['registration']}",
    }
    return str(api.create_run("incident", body)["id"])


def _run_here(runs: list, cfg: Any, approve_as: Any, console: Any, json_out: bool) -> list[dict]:
    """Executes the incidents opened here in this process, with the live view."""
    import asyncio
    import contextlib

    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow_async

    from flows.execute import LiveView, quiet_prefect_console
    from flows.incident import incident
    from runbooks.engine import live
    from runbooks.engine.guard import preapproval, verified_os_identity

    quiet_prefect_console()
    view = LiveView(
        console,
        interactive=sys.stdin.isatty() and not json_out,
        show=not json_out,
        recovery_window_s=cfg.verification.healthy_for,
        recovery_timeout_s=cfg.verification.timeout,
    )
    live.subscribe(view)

    async def one(alert: Any, intake: dict[str, str], run_id: str) -> dict:
        async with get_client() as client:
            run = await client.read_flow_run(UUID(run_id))
        parameters = {
            "alert": alert,
            "config": cfg,
            "approve_as": approve_as,
            "requested_by": verified_os_identity(),
            "intake": intake,
        }
        state: Any = await run_flow_async(
            incident, flow_run=run, parameters=parameters, return_type="state"
        )
        return await state.result()

    async def main() -> list[dict]:
        return list(await asyncio.gather(*(one(*r) for r in runs)))

    # --approve-as lives in this process, which runs the incident and its runbooks.
    pre = preapproval(approve_as) if approve_as else contextlib.nullcontext()
    try:
        with pre:
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
        _print_rows(
            rows,
            json_out,
            title="Incidents",
            columns=("id", "sev", "service", "status", "age", "SLA", "acked", "approvals", "title"),
            cells=_incident_cells,
            empty="No incidents.",
        )


def _incident_cells(r: dict[str, Any]) -> tuple[str, ...]:
    style = {"breached": "red", "pending": "yellow"}.get(r["sla"], "")
    sla = r["sla"]
    if r["sla_due"]:
        left = datetime.fromisoformat(r["sla_due"]) - datetime.now(UTC)
        sla += f", {max(0.0, left.total_seconds()) // 60:.0f}m left"
    return (
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
