"""Drill db-connections: exhaust an embedded PostgreSQL's connections, let the runbook fix it."""

from __future__ import annotations

import time
from typing import Any

from checks.findings import Severity
from flows.drills.play import play
from flows.drills.scorecard import Scorecard

__all__ = ["drill"]

IDLE_S = 1  # the runbook's idle-in-transaction threshold in the drill (seconds)


def drill(*, approve_as: str | None, console: Any, interactive: bool, show: bool) -> Scorecard:
    """Exhausts an embedded PostgreSQL's connections and lets db-connections fix it."""
    from flows.drills.sandbox.postgres import ConnectionExhaustion, EmbeddedPostgres

    # The fault first: it must age past the runbook's threshold, and the imports below (and
    # Prefect's, started by `oncall drill`) happen while it does.
    with EmbeddedPostgres(max_connections=20) as pg, ConnectionExhaustion(pg.app_dsn) as fault:
        injected = time.monotonic()
        from integrations.postgres import PostgresTarget
        from integrations.service import Service
        from runbooks.catalog import require

        spec = require("db-connections")
        params = spec.params(
            idle_in_transaction_seconds=IDLE_S,
            long_query_seconds=60,
            approval_timeout_seconds=300,
            verify_timeout_seconds=10,
            verify_hold_seconds=3,  # stale sessions must not pile up again (idle after 1 s)
        )
        if show:
            console.print(
                f"[bold]Drill db-connections[/bold]: embedded PostgreSQL, max_connections=20; "
                f"injected {len(fault.idle_pids)} idle-in-transaction sessions and a lock chain "
                f"(root blocker pid {fault.blocker_pid}, {len(fault.waiter_pids)} waiting)."
            )
        aged = time.monotonic() - injected
        time.sleep(max(0.0, IDLE_S + 0.3 - aged))  # let the fault age past the threshold
        target = PostgresTarget(name="drill-postgres", dsn=pg.dsn)
        return play(
            spec,
            Severity.P1,
            service=Service(name="drill-postgres", postgres=target),
            params=params,
            injected=injected,
            approve_as=approve_as,
            console=console,
            interactive=interactive,
            show=show,
        )
