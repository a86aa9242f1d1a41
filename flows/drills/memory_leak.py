"""Drill memory-leak: a real process starts leaking with a deploy; the runbook restarts it.

The sandbox is a ``leaky`` app (real resident memory growth) scraped every second by a real
Prometheus. The remediation is the service's configured ``restart`` action: an HTTP call to
the app's ``/control`` that drops the memory it holds, as a fresh instance would. v2 stays
deployed and leaks on after the restart, so the honest score is *mitigated*: handed to rollback.
"""

from __future__ import annotations

import time

from checks.findings import Severity
from flows.drills.play import Player, scenario
from flows.drills.scorecard import Scorecard
from flows.drills.scraped import SCRAPE, scraped_app

__all__ = ["drill"]

SERVICE = "drill-api"


@scenario(
    "memory-leak",
    Severity.P1,
    **SCRAPE,
    deploy_window_seconds=30,
    verify_timeout_seconds=20,
    verify_hold_seconds=15,  # the leak shows its slope again within a few seconds
)
def drill(player: Player) -> Scorecard:
    """Makes a real process leak memory after a deploy and lets memory-leak restart it."""
    with scraped_app(
        "leaky",
        SERVICE,
        history="process_resident_memory_bytes",
        samples=5,
        paused=True,
        limit_mb=512,
    ) as scraped:
        player.say(
            f"[bold]Drill memory-leak[/bold]: leaky app {scraped.app.url} (limit 512 MiB) scraped"
            f" every second by Prometheus {scraped.prometheus.url}; flat history recorded."
        )
        scraped.app.control(version="v2", leak=True, leak_mb_per_s=4)
        player.inject("Deployed v2, which leaks 4 MiB/s; letting the leak show…")
        time.sleep(8)  # enough growth for a straight-line fit to be sure
        restart = scraped.control_action(
            "Restart the app: drops the memory it holds, like a fresh instance",
            {"restart": True},
            undo="nothing to undo: a restart only drops held memory",
        )
        # The leaking version stays deployed: the restart only buys time.
        return player.play(scraped.service(restart=restart), "mitigated")
