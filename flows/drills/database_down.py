"""Drill database-down: a migration locks a table the API reads; the runbook ends it."""

from __future__ import annotations

from checks.findings import Severity
from flows.drills.play import Player, postgres_service, scenario
from flows.drills.scorecard import Scorecard

__all__ = ["drill"]


@scenario(
    "database-down",
    Severity.P0,
    load_first=False,
    connect_attempts=2,
    migration_seconds=1,
    verify_timeout_seconds=10,
    verify_hold_seconds=3,  # the lock must not come back
)
def drill(player: Player) -> Scorecard:
    """Locks an embedded PostgreSQL's table behind a migration and lets database-down end it."""
    from flows.drills.sandbox.postgres import EmbeddedPostgres, MigrationLock

    with EmbeddedPostgres(max_connections=20) as pg, MigrationLock(pg.app_dsn) as fault:
        player.inject()
        player.load()
        player.say(
            "[bold]Drill database-down[/bold]: embedded PostgreSQL; a migration (pid"
            f" {fault.migration_pid}) holds ACCESS EXCLUSIVE on accounts and"
            f" {len(fault.reader_pids)} API sessions wait behind it."
        )
        return player.play(postgres_service(pg))
