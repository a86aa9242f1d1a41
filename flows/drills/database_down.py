"""Drill database-down: a migration locks a table the API reads; the runbook ends it."""

from __future__ import annotations

import time
from typing import Any

from checks.findings import Severity
from flows.drills.play import play
from flows.drills.scorecard import Scorecard

__all__ = ["drill"]


def drill(*, approve_as: str | None, console: Any, interactive: bool, show: bool) -> Scorecard:
    """Locks an embedded PostgreSQL's table behind a migration and lets database-down end it."""
    from flows.drills.sandbox.postgres import EmbeddedPostgres, MigrationLock

    with EmbeddedPostgres(max_connections=20) as pg, MigrationLock(pg.app_dsn) as fault:
        injected = time.monotonic()
        from integrations.postgres import PostgresTarget
        from integrations.service import Service
        from runbooks.catalog import require

        spec = require("database-down")
        params = spec.params(
            connect_attempts=2,
            migration_seconds=1,
            approval_timeout_seconds=300,
            verify_timeout_seconds=10,
            verify_hold_seconds=3,  # the lock must not come back
        )
        if show:
            console.print(
                "[bold]Drill database-down[/bold]: embedded PostgreSQL; a migration (pid"
                f" {fault.migration_pid}) holds ACCESS EXCLUSIVE on accounts and"
                f" {len(fault.reader_pids)} API sessions wait behind it."
            )
        target = PostgresTarget(name="drill-postgres", dsn=pg.dsn)
        return play(
            spec,
            Severity.P0,
            service=Service(name="drill-postgres", postgres=target),
            params=params,
            injected=injected,
            approve_as=approve_as,
            console=console,
            interactive=interactive,
            show=show,
        )
