"""Drill high-error-rate: a "feature" starts failing 30 % of requests; the runbook turns it off.

The sandbox is a ``faulty`` app serving real HTTP with its own load, scraped every second by a
real Prometheus. The fault is injected through the app's ``/control`` (``error_rate``); the
remediation is the service's configured ``disable_feature_flag`` action, an HTTP call to that
same ``/control`` setting the error rate back to 0 — the sandbox's feature flag.
"""

from __future__ import annotations

from checks.findings import Severity
from flows.drills.play import Player, scenario
from flows.drills.scorecard import Scorecard
from flows.drills.scraped import FAST_WINDOWS, loaded_app

__all__ = ["drill"]

SERVICE = "drill-api"
ERROR_RATE = 0.3  # above 10 %: P0 (seed 000 Part H)
ERRORS = f'sum(rate(http_requests_total{{job="{SERVICE}",status=~"5.."}}[5s]))'


@scenario("high-error-rate", Severity.P0, **FAST_WINDOWS)
def drill(player: Player) -> Scorecard:
    """Makes a real app fail 30 % of requests and lets high-error-rate switch the flag off."""
    intro = (
        "[bold]Drill high-error-rate[/bold]: faulty app {app} under its own"
        " load, scraped every second by Prometheus {prometheus}."
    )
    with loaded_app(player, SERVICE, intro, latency=0.02, rps=20) as scraped:
        scraped.app.control(error_rate=ERROR_RATE)
        player.inject(f"Feature on: every endpoint now fails {ERROR_RATE:.0%} of requests.")
        scraped.wait_for(ERRORS, 1.0)
        undo = f"POST {scraped.app.url}/control {{'error_rate': {ERROR_RATE}}} turns it back on"
        flag = scraped.control_action(
            "Disable the failing feature", {"error_rate": 0}, risk="risky", undo=undo
        )
        return player.play(scraped.service(disable_feature_flag=flag))
