"""Drill db-connections: exhaust an embedded PostgreSQL's connections, let the runbook fix it."""

from __future__ import annotations

import time

from checks.findings import Severity
from flows.drills.play import Player, postgres_service, scenario
from flows.drills.scorecard import Scorecard

__all__ = ["drill"]

IDLE_S = 1  # the runbook's idle-in-transaction threshold in the drill (seconds)


@scenario(
    "db-connections",
    Severity.P1,
    load_first=False,
    idle_in_transaction_seconds=IDLE_S,
    long_query_seconds=60,
    verify_timeout_seconds=10,
    verify_hold_seconds=3,  # stale sessions must not pile up again (idle after 1 s)
)
def drill(player: Player) -> Scorecard:
    """Exhausts an embedded PostgreSQL's connections and lets db-connections fix it."""
    from flows.drills.sandbox.postgres import ConnectionExhaustion, EmbeddedPostgres

    # The fault first: it must age past the runbook's threshold, and the imports below (and
    # Prefect's, started by `oncall drill`) happen while it does.
    with EmbeddedPostgres(max_connections=20) as pg, ConnectionExhaustion(pg.app_dsn) as fault:
        injected = player.inject()
        player.load()
        player.say(
            f"[bold]Drill db-connections[/bold]: embedded PostgreSQL, max_connections=20; "
            f"injected {len(fault.idle_pids)} idle-in-transaction sessions and a lock chain "
            f"(root blocker pid {fault.blocker_pid}, {len(fault.waiter_pids)} waiting)."
        )
        aged = time.monotonic() - injected
        time.sleep(max(0.0, IDLE_S + 0.3 - aged))  # let the fault age past the threshold
        return player.play(postgres_service(pg))
