"""``oncall intake list|replay``: the alerts the intake store holds (flows/spool.py).

Registered on the ``oncall`` app by ``flows.cli``. No Prefect import: the store is SQLite or
PostgreSQL, read directly.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Annotated

import typer

from flows.cli_base import ConfigOpt, JsonOpt, _console, _errors, _print_json, sub_app
from integrations.errors import ConfigError

__all__ = ["intake_app"]

intake_app = sub_app("intake", "Alerts the intake holds: pending, quarantined, replay.")


def _store(config: str | None):
    from flows.config_load import find_config, load_config
    from flows.spool import Spool, store_url

    path = find_config(config)
    return Spool(store_url(load_config(path) if path else None))


@intake_app.command("list")
def intake_list(
    state: Annotated[
        str, typer.Option("--state", help="pending, quarantined, done or all")
    ] = "all",
    limit: Annotated[int, typer.Option(help="How many, newest first")] = 50,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Lists the alerts the intake holds: pending (and why), quarantined (and why), done."""
    with _errors():
        if state not in ("pending", "quarantined", "done", "all"):
            raise ConfigError(f"--state {state!r}: use pending, quarantined, done or all")
        store = _store(config)
        try:
            entries = store.entries(None if state == "all" else state, limit=limit)
            stats = store.stats()
        finally:
            store.close()
        rows = [
            {
                "id": e.id,
                "state": e.state,
                "service": e.service,
                "status": e.status,
                "received": datetime.fromtimestamp(e.received, UTC).isoformat(),
                "attempts": e.attempts,
                "error": e.error,
                "outcome": e.outcome,
            }
            for e in entries
        ]
        if json_out:
            _print_json({"stats": stats, "alerts": rows})
            return
        console = _console()
        console.print(
            f"{stats['pending']} pending (oldest {stats['oldest_pending_s']:.0f}s),"
            f" {stats['quarantined']} quarantined, {stats['done']} done"
        )
        from rich.table import Table

        table = Table()
        for column in ("id", "state", "service", "status", "received", "why / outcome"):
            table.add_column(column, overflow="fold")
        for r in rows:
            outcome = r["outcome"] or {}
            why = r["error"] or " ".join(
                str(v) for v in (outcome.get("action"), outcome.get("reason")) if v
            )
            table.add_row(
                r["id"][:12], r["state"], r["service"], r["status"], r["received"][:19], why
            )
        console.print(table)


@intake_app.command("replay")
def intake_replay(
    alert_id: Annotated[str, typer.Argument(help="Alert id (or a unique prefix)")],
    config: ConfigOpt = None,
) -> None:
    """Puts a quarantined (or handled) alert back in the queue; oncall serve retries it."""
    with _errors():
        store = _store(config)
        try:
            entry = store.replay(alert_id)
        finally:
            store.close()
        sys.stdout.write(f"alert {entry.id} ({entry.service}) is pending again\n")
