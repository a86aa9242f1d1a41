"""The ``oncall`` command line.

Fast paths (``--help``, ``runbooks``, ``pending``, ``approve``) never import
Prefect; commands that run flows import it when they need it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Annotated, NoReturn

from flows.bytecode import cache_bytecode  # first: before typer, pydantic …

cache_bytecode()

# httpx imports its own command line (click, rich.progress, pygments) on `import httpx`:
# ~0.2 s of every oncall command for a CLI we never run (encode/httpx#3547). A None entry
# makes that optional import fail, and httpx falls back to a stub `httpx.main`.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]  # None blocks an import; typeshed: modules only

import typer  # noqa: E402

from flows.cli_base import (  # noqa: E402
    JsonOpt,
    _api,
    _approver,
    _console,
    _ensure_server,
    _errors,
    _print_json,
    _print_rows,
    _say,
    _secrets,
    app,
    sub_app,
)
from integrations.errors import ConfigError, TargetError  # noqa: E402

server_app = sub_app("server", "Manage the local Prefect server.")


def _spec(name: str):
    from runbooks.catalog import require

    return require(name)


def _params(spec, pairs: list[str]):
    from pydantic import ValidationError

    values: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--param needs NAME=VALUE, got {pair!r}")
        values[name.strip().replace("-", "_")] = value
    try:
        return spec.params.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            known = ", ".join(spec.params.model_fields)
            raise ConfigError(
                f"--param {field}: not a parameter of {spec.name} (known: {known})"
            ) from None
        raise ConfigError(f"--param {field}: {err['msg']}") from None


def _dsn_service(dsn: str | None):
    """A one-target Service from ``--dsn``."""
    from psycopg.conninfo import conninfo_to_dict
    from pydantic import ValidationError

    from integrations.postgres import PostgresTarget, malformed
    from integrations.redact import password_fragments
    from integrations.service import Service

    if not dsn:
        raise ConfigError("give --service NAME (from oncall.yaml) or --dsn DSN")
    # Only the password is a secret: the rest of the DSN is what a person needs to see.
    _secrets.extend(password_fragments(dsn))
    if error := malformed(dsn):
        raise ConfigError(
            f"--dsn: {error} (e.g. postgresql://app@db.internal:5432/app"
            " or 'host=db.internal dbname=app user=app')"
        )
    info = conninfo_to_dict(dsn)
    if info.get("password"):
        _secrets.append(str(info["password"]))
    host = str(info.get("host") or "local")
    host = "local" if host.startswith("/") else host
    name = f"{info.get('dbname') or 'postgres'}@{host}"
    try:
        return Service(name=name, postgres=PostgresTarget(name=name, dsn=dsn))
    except ValidationError as exc:
        raise ConfigError(exc.errors()[0]["msg"]) from None


@app.command("runbooks")
def runbooks_cmd(json_out: JsonOpt = False) -> None:
    """Lists the runbooks: what each diagnoses, what it may change, and at what risk."""
    from flows.cards import cards

    listed = cards()
    if json_out:
        _print_json(
            [
                {
                    "name": c["name"],
                    "summary": c["summary"],
                    "diagnoses": c["diagnoses"],
                    "changes": [{"action": x["what"], "risk": x["risk"]} for x in c["changes"]],
                    "targets": c["targets"],
                    "parameters": c["params"]["properties"],
                }
                for c in listed
            ]
        )
        return
    from rich.table import Table

    table = Table(title="Runbooks", show_lines=True)
    for column in ("runbook", "diagnoses", "may change", "risk"):
        table.add_column(column)
    for c in listed:
        table.add_row(
            f"[bold]{c['name']}[/bold]\n{c['summary']}\n[dim]targets: {c['targets']}[/dim]",
            "\n".join(f"• {d}" for d in c["diagnoses"]),
            "\n".join(f"• {x['what']}" for x in c["changes"]),
            "\n".join(x["risk"] for x in c["changes"]),
        )
    _console().print(table)


@app.command("run")
def run_cmd(
    name: Annotated[str, typer.Argument(help="Runbook name (see `oncall runbooks`).")],
    dsn: Annotated[
        str | None,
        typer.Option(envvar="ONCALL_DSN", show_envvar=False, help="PostgreSQL DSN of the target."),
    ] = None,
    service_name: Annotated[
        str | None,
        typer.Option("--service", "-s", help="A service from oncall.yaml (all its targets)."),
    ] = None,
    config: Annotated[
        str | None, typer.Option("--config", "-c", help="oncall.yaml (default: ./oncall.yaml)")
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="NAME=VALUE, repeatable.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Diagnose and plan; change nothing.")
    ] = False,
    approve_as: Annotated[
        str | None,
        typer.Option(
            "--approve-as", help="Pre-approve this run as NAME (your OS user is recorded)."
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Runs a runbook as a Prefect flow: diagnose, plan, ask for approval, act, verify."""
    with _errors():
        spec = _spec(name)
        params = _params(spec, param or [])
        approve_as = _approver(approve_as, "--approve-as")
        from flows.config_load import find_config, load_config

        path = find_config(config)
        loaded = load_config(path) if path is not None else None  # errors: exit 2, up front
        if path is not None:  # its approvals: apply to this run (--dsn too), and to its gate
            os.environ["ONCALL_CONFIG"] = str(path.resolve())
        if service_name:
            if loaded is None:
                raise ConfigError("--service needs oncall.yaml (--config, ONCALL_CONFIG or ./)")
            service = loaded.service(service_name)
        else:
            service = _dsn_service(dsn)
        spec.targets.require(spec.name, service)  # one line now, not a flow that fails later
        console = _console(json_out)
        _ensure_server(console, wait=False)
        from flows.execute import run_runbook

        report = run_runbook(
            spec,
            service=service,
            params=params,
            dry_run=dry_run,
            approve_as=approve_as,
            console=console,
            interactive=sys.stdin.isatty() and not json_out,
            show=not json_out,
        )
        if json_out:
            sys.stdout.write(report.model_dump_json(indent=2) + "\n")
        else:
            from flows.render import report_summary

            report_summary(console, report)
    raise typer.Exit(report.exit_code)


@app.command("pending")
def pending_cmd(json_out: JsonOpt = False) -> None:
    """Lists approval gates waiting for a decision."""
    with _errors(), _api() as api:
        rows = []
        for run in api.paused_runs():
            gate = api.gate(run) or {}
            rows.append(
                {
                    "run_id": run["id"],
                    "run_name": run.get("name"),
                    "runbook": gate.get("runbook") or api.flow_name(run["flow_id"]),
                    "target": gate.get("target"),
                    "plan": gate.get("summary", "(no oncall gate record)"),
                    "risk": gate.get("risk"),
                    "waiting_since": gate.get("waiting_since") or run.get("start_time"),
                    "timeout_at": gate.get("timeout_at"),
                    "state": (run.get("state") or {}).get("name"),
                }
            )
        _print_rows(
            rows,
            json_out,
            title="Waiting for approval",
            columns=("run id", "runbook", "target", "plan", "risk", "waiting since"),
            cells=lambda row: (
                row["run_id"],
                row["runbook"],
                row["target"] or "",
                row["plan"],
                row["risk"] or "",
                (row["waiting_since"] or "")[:19],
            ),
            empty="No gate is waiting for a decision.",
        )


@app.command("approve")
def approve_cmd(
    run_id: Annotated[str, typer.Argument(help="Flow run id (or a unique prefix).")],
    as_: Annotated[
        str, typer.Option("--as", help="Your name as shown (your OS user is what is verified).")
    ],
    reject: Annotated[bool, typer.Option("--reject", help="Reject the plan instead.")] = False,
    reason: Annotated[str, typer.Option("--reason", help="Why; kept in the report.")] = "",
    wait: Annotated[
        float, typer.Option("--wait", help="Seconds to wait for what the gate made of it.")
    ] = 15.0,
) -> None:
    """Decides a waiting approval gate (approve, or --reject), sealed as your OS user."""
    with _errors(), _api() as api:
        approver = _approver(as_, "--as")
        if len(reason) > 500:
            raise ConfigError("--reason is limited to 500 characters")
        full_id = api.resolve_run_id(run_id)
        try:
            run = api.flow_run(full_id)
        except TargetError as exc:
            if exc.status in (404, 422):
                raise ConfigError(f"no flow run {run_id!r}") from None
            raise
        run = api.pausing(run)
        state = run.get("state") or {}
        if state.get("type") != "PAUSED":
            raise ConfigError(
                f"run {full_id} is not waiting for approval (state: {state.get('name')})"
            )
        gate = api.gate(run)
        if gate is None:
            raise ConfigError(f"run {full_id} is paused but has no oncall approval gate")
        from flows.decisions import describe_verdict, sealed_input, wait_verdict
        from runbooks.engine.guard import verified_os_identity

        who = verified_os_identity()
        run_input = sealed_input(
            gate,
            run_id=full_id,
            approved=not reject,
            reason=reason,
            approver=approver or who,
            identity=who,
            channel="cli",
        )
        result = api.resume(full_id, run_input)
        if result.get("status") != "ACCEPT":
            detail = (result.get("details") or {}).get("reason") or result
            raise ConfigError(f"Prefect refused the decision: {detail}")
        verdict = wait_verdict(api, full_id, gate["pause_key"], wait)
        sys.stdout.write(
            f"{'rejection' if reject else 'approval'} of {gate.get('summary', 'the plan')}"
            f" (run {full_id}) sent as {approver}, identity {who}: {describe_verdict(verdict)}\n"
        )
        if verdict is not None and verdict.get("verdict") in ("refused", "not-counted"):
            raise typer.Exit(1)


def _preload(module: str) -> None:
    """Imports ``module`` in a background thread (the import lock makes users wait for it)."""
    import importlib
    import threading

    threading.Thread(target=importlib.import_module, args=(module,), daemon=True).start()


def _drill_help() -> str:
    from flows.drills.registry import help_text  # plain data: keeps --help fast

    return (
        "Runs a game day: sandbox, injected fault, real runbook, approval, scorecard.\n\n"
        + help_text()
    )


@app.command("drill", help=_drill_help())
def drill_cmd(
    scenario: Annotated[str, typer.Argument(help="A scenario below, or all.")],
    approve_as: Annotated[
        str | None, typer.Option("--approve-as", help="Pre-approve the plan as NAME.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    with _errors():
        from flows.drills.registry import DRILLS, missing

        if scenario != "all" and scenario not in DRILLS:
            raise ConfigError(f"unknown drill {scenario!r} (known: all, {', '.join(DRILLS)})")
        names = list(DRILLS) if scenario == "all" else [scenario]
        lacking = [f"drill {name} {why}" for name in names for why in missing(name)]
        if lacking:  # before anything starts: exactly what is missing, exit 2
            raise ConfigError("; ".join(lacking))
        approve_as = _approver(approve_as, "--approve-as")
        console = _console(json_out)
        _ensure_server(console, wait=False)
        _preload("flows.execute")  # Prefect's import overlaps the sandbox's start-up
        if scenario == "all":
            from flows.drills.console import run_and_show

            passed = run_and_show(names, approve_as=approve_as, console=console, json_out=json_out)
            raise typer.Exit(0 if passed else 1)
        from flows.drills.registry import load

        card = load(scenario)(
            approve_as=approve_as,
            console=console,
            interactive=sys.stdin.isatty() and not json_out,
            show=not json_out,
        )
        from flows.drills.record import record_card

        record_card(card, trigger="cli")
        if json_out:
            sys.stdout.write(card.model_dump_json(indent=2) + "\n")
        else:
            from flows.render import scorecard_panel

            console.print(scorecard_panel(card))
    raise typer.Exit(0 if card.passed else 1)


@app.command("serve")
def serve_cmd(
    config: Annotated[
        str | None, typer.Option("--config", "-c", help="oncall.yaml (default: ./oncall.yaml)")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Receiver address (receiver.host)")] = None,
    port: Annotated[int | None, typer.Option(help="Receiver port (receiver.port)")] = None,
    limit: Annotated[int | None, typer.Option(help="Most flow runs at once")] = None,
    runner: Annotated[
        bool,
        typer.Option(
            "--runner/--no-runner",
            help="Also run the deployments here (--no-runner: receiver only, workers run them)",
        ),
    ] = True,
) -> None:
    """Runs the webhook receiver, the health sweep and every flow as Prefect deployments."""
    with _errors():
        import asyncio

        # A deployment run (an alert's incident, its runbooks) starts when the runner next
        # polls: every 10 s by default (with incidents: deployment, twice on the way from an
        # alert to a finding).
        os.environ.setdefault("PREFECT_RUNNER_POLL_FREQUENCY", "1")
        # Flow runs the runner starts in child processes keep their INFO lines for the
        # Prefect UI; the terminal gets one line per event from oncall serve itself.
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")

        from flows.config_load import find_config, load_config

        path = find_config(config)
        if path is None:
            raise ConfigError("oncall serve needs oncall.yaml (--config, ONCALL_CONFIG or ./)")
        load_config(str(path))  # every problem, one per line, exit 2, before anything starts
        from flows.serve_log import Outlet, exit_within

        outlet = Outlet.install()  # a full or closed stdout must never hold up a stop
        console = _console()
        _ensure_server(console)
        from flows.execute import quiet_prefect_console
        from flows.serve import serve

        quiet_prefect_console()

        def stopping() -> None:  # runs in the signal handler: it starts a thread, no more
            exit_within(4.5, outlet, _say)

        asyncio.run(
            serve(
                str(path),
                host=host,
                port=port,
                limit=limit,
                runner=runner,
                on_stopping=stopping,
            )
        )
        console.print("oncall serve: stopped")
        outlet.drain(0.5)


@app.command("doctor")
def doctor_cmd(
    config: Annotated[
        str | None, typer.Option("--config", "-c", help="oncall.yaml (default: ./oncall.yaml)")
    ] = None,
    service: Annotated[
        str | None, typer.Option("--service", "-s", help="Check only this service's targets")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Checks oncall.yaml and every target: reachable, authenticated, allowed to remediate."""
    with _errors():
        from flows.doctor import doctor

        code = doctor(config, service, json_out, _console(json_out))
    raise typer.Exit(code)


@app.command("audit")
def audit_cmd(
    incident: Annotated[
        str | None, typer.Option("--incident", help="Only this incident's decisions (INC-7).")
    ] = None,
    verify: Annotated[
        bool, typer.Option("--verify", help="Check the hash chain; exit 1 when it is broken.")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Lists every approval, rejection, refused decision and timeout (tamper-evident)."""
    from flows.cli_audit import audit

    audit(incident, verify, json_out)


@server_app.command("status")
def server_status(json_out: JsonOpt = False) -> None:
    """Shows whether the Prefect server answers, where, and its version."""
    from flows import server

    info = server.status()
    if json_out:
        _print_json(info)
    else:
        state = "[green]healthy[/green]" if info["healthy"] else "[red]not answering[/red]"
        _console().print(
            f"Prefect API {info['api_url']}: {state}"
            + (f" (version {info.get('version')}, pid {info['pid']})" if info["healthy"] else "")
        )
        if info["healthy"]:
            _console().print(f"UI: {info['ui_url']}")
            _console().print(
                "API protected: basic auth (the UI asks for the secret in"
                f" {server.prefect_home() / server.AUTH_FILE})"
                if info.get("protected")
                else "[red]API NOT protected: anyone who reaches it can approve and run"
                " anything[/red]"
            )
    raise typer.Exit(0 if info["healthy"] else 3)


@server_app.command("start")
def server_start(
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url", help="postgresql+asyncpg://… (default: SQLite under PREFECT_HOME)"
        ),
    ] = None,
) -> None:
    """Starts the local Prefect server in the background (if none answers)."""
    from flows import server

    with _errors():
        if database_url:
            _secrets.append(database_url)
        url = os.environ.get("PREFECT_API_URL", server.DEFAULT_API_URL)
        info = server.start(url, database_url=database_url)
        _console().print(f"Prefect server healthy at {info['api_url']} — UI {info.get('ui_url')}")


@server_app.command("stop")
def server_stop() -> None:
    """Stops the Prefect server that oncall started."""
    from flows import server

    stopped = server.stop()
    _console().print("stopped" if stopped else "no server started by oncall is running")


# The incident and intake commands register themselves on `app` (flows.cli_base).
from flows import cli_incident, cli_intake  # noqa: E402,F401
from flows.cli_kpi import register as _register_kpi  # noqa: E402

_register_kpi(app)  # report, handoff


def main() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")  # Prefect's client-side telemetry
    try:
        app()
    except SystemExit as done:
        _exit(done.code)
    _exit(0)


def _exit(code: str | int | None) -> NoReturn:
    """Exits; after a command that imported Prefect, without the interpreter's teardown.

    Tearing down the ~3,000 modules a flow run loads took ~0.6 s after the command's last
    output (`oncall drill`: 5.7 → 5.1 s). Everything that must happen still does, in the
    order Python does it: other threads are joined, atexit handlers run (Prefect's log and
    event workers drain to the server, logging flushes, pgserver stops its servers), the
    standard streams are flushed; only the module teardown is skipped.
    """
    if "prefect" not in sys.modules:
        sys.exit(code)
    import atexit
    import threading

    if isinstance(code, str):  # SystemExit("message"): printed, status 1
        sys.stderr.write(code + "\n")
        code = 1
    status = code if isinstance(code, int) else 0 if code is None else 1
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
