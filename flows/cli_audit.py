"""``oncall audit [--incident ID] [--verify]``: the decisions log, and whether it is intact.

The command is declared in ``flows.cli`` and runs :func:`audit` (this module imports
nothing of the CLI at import: no cycle). Reads this machine's audit log
(``runbooks.engine.audit``); ``--verify`` checks its hash chain and seals, then compares
it with the ``oncall.audit.*`` events the gates sent to Prefect (a tail cut off the file
is still in Prefect). No Prefect import.
"""

from __future__ import annotations

import os
from typing import Any

import typer

from integrations.errors import OncallError

__all__ = ["audit", "missing_from_log"]


def missing_from_log(entries: list[dict[str, Any]], events: list[dict[str, Any]]) -> list[str]:
    """Entries Prefect's events recorded for this log that the log no longer holds."""
    by_seq = {e.get("seq"): e.get("hash") for e in entries}
    here = {e.get("log") for e in entries} or {_log_name()}
    problems = []
    for event in events:
        entry = event.get("payload") or {}
        if entry.get("log") not in here:
            continue  # another machine's log
        if by_seq.get(entry.get("seq")) != entry.get("hash"):
            problems.append(
                f"entry {entry.get('seq')} ({entry.get('verdict')} by {entry.get('approver')},"
                f" run {entry.get('run_id')}) is in Prefect's events but not in the log"
                " as recorded (removed or rewritten)"
            )
    return problems


def _log_name() -> str:
    import socket

    from runbooks.engine.audit import audit_path

    return f"{socket.gethostname()}:{audit_path()}"


def _prefect_events() -> list[dict[str, Any]] | None:
    from flows.prefect_api import PrefectAPI
    from flows.server import DEFAULT_API_URL

    try:
        with PrefectAPI(os.environ.get("PREFECT_API_URL", DEFAULT_API_URL)) as api:
            return api.events_named("oncall.audit.")
    except OncallError:
        return None


def audit(incident: str | None, verify: bool, json_out: bool) -> None:
    """Lists every approval, rejection, refused decision and timeout (tamper-evident)."""
    from flows.cli_base import _errors, _print_json
    from runbooks.engine.audit import audit_path, read
    from runbooks.engine.audit import verify as verify_chain

    with _errors():
        entries = read()
        shown = entries
        if incident:
            ident = incident.upper() if incident.upper().startswith("INC-") else f"INC-{incident}"
            shown = [e for e in entries if str(e.get("incident_id") or "").upper() == ident]
        problems: list[str] = []
        checked_events = None
        if verify:
            problems = verify_chain(entries)
            events = _prefect_events()
            if events is not None:
                checked_events = len(events)
                problems += missing_from_log(entries, events)
        if json_out:
            out: dict[str, Any] = {"log": str(audit_path()), "entries": shown}
            if verify:
                out |= {"intact": not problems, "problems": problems, "events": checked_events}
            _print_json(out)
        else:
            _table(shown, str(audit_path()))
            if verify:
                _verdict(problems, len(entries), checked_events)
    if verify and problems:
        raise typer.Exit(1)


def _table(entries: list[dict[str, Any]], path: str) -> None:
    from rich.table import Table

    from flows.cli_base import _console

    console = _console()
    if not entries:
        console.print(f"No decisions recorded in {path}.")
        return
    table = Table(title=f"Audit log {path}")
    for column in ("#", "at (UTC)", "decision", "incident", "runbook", "target", "who", "why"):
        table.add_column(column, overflow="fold")
    for e in entries:
        if "unreadable" in e:
            table.add_row("?", "", "unreadable", "", "", "", "", e["unreadable"])
            continue
        who = f"{e.get('approver')} ({e.get('identity') or '-'}) via {e.get('channel')}"
        table.add_row(
            str(e.get("seq")),
            str(e.get("at", ""))[:19].replace("T", " "),
            str(e.get("verdict")),
            str(e.get("incident_id") or ""),
            str(e.get("runbook")),
            str(e.get("target")),
            who,
            str(e.get("why") or e.get("reason") or ""),
        )
    console.print(table)


def _verdict(problems: list[str], count: int, events: int | None) -> None:
    from flows.cli_base import _console

    console = _console()
    against = (
        f"; compared with {events} audit event(s) in Prefect"
        if events is not None
        else "; Prefect not reachable: not compared with its events"
    )
    if not problems:
        console.print(f"[green]audit log intact[/green]: {count} entries, chain and seals{against}")
        return
    console.print(f"[red]audit log BROKEN[/red] ({count} entries{against}):")
    for problem in problems:
        console.print(f"  - {problem}")
