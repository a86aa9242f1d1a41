"""Drill performance-degradation: the app's cache goes cold and every request takes 2.5 s.

The sandbox is a ``faulty`` app serving real HTTP under its own load, scraped every second
by a real Prometheus. The fault is injected through the app's ``/control``: every endpoint
answers after ``latency_s`` = 2.5 s, as if each request missed the cache and went to a slow
backend (p95 above the seeds' 2 s: P2). The remediation is the service's configured
``clear_cache`` action, an HTTP call to that same ``/control`` that brings the latency back
to 20 ms — the sandbox's cache, rebuilt.
"""

from __future__ import annotations

from checks.findings import Severity
from flows.drills.play import Player, scenario
from flows.drills.scorecard import Scorecard
from flows.drills.scraped import FAST_WINDOWS, loaded_app

__all__ = ["drill"]

SERVICE = "drill-api"
NORMAL_S = 0.02
SLOW_S = 2.5  # p95 above 2 s: P2 (seed 000 Incident 6)
P95 = (
    "histogram_quantile(0.95, sum by (le) (rate("
    f'http_request_duration_seconds_bucket{{job="{SERVICE}"}}[5s])))'
)


@scenario("performance-degradation", Severity.P2, **FAST_WINDOWS)
def drill(player: Player) -> Scorecard:
    """Makes a real app answer every request in 2.5 s; performance-degradation clears its cache."""
    intro = (
        "[bold]Drill performance-degradation[/bold]: app {app} under its own"
        " load (10 requests/s), scraped every second by Prometheus {prometheus}."
    )
    with loaded_app(player, SERVICE, intro, latency=NORMAL_S, rps=10) as scraped:
        scraped.app.control(latency_s=SLOW_S)
        player.inject(f"Cache cold: every endpoint now answers in {SLOW_S:g} s.")
        scraped.wait_for(P95, 2.0)
        cache = scraped.control_action(
            "Clear the app's cache so it is rebuilt from fresh data",
            {"latency_s": NORMAL_S},
            risk="safe",
            undo="nothing to undo: the cache fills again as requests arrive",
        )
        return player.play(scraped.service(clear_cache=cache))
