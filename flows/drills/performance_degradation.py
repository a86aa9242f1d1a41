"""Drill performance-degradation: the app's cache goes cold and every request takes 2.5 s.

The sandbox is a ``faulty`` app serving real HTTP under its own load, scraped every second
by a real Prometheus. The fault is injected through the app's ``/control``: every endpoint
answers after ``latency_s`` = 2.5 s, as if each request missed the cache and went to a slow
backend (p95 above the seeds' 2 s: P2). The remediation is the service's configured
``clear_cache`` action, an HTTP call to that same ``/control`` that brings the latency back
to 20 ms — the sandbox's cache, rebuilt.
"""

from __future__ import annotations

import time
from typing import Any

from checks.findings import Severity
from flows.drills.play import play, scraped_app
from flows.drills.sandbox.prometheus import wait_for
from flows.drills.scorecard import Scorecard

__all__ = ["drill"]

SERVICE = "drill-api"
NORMAL_S = 0.02
SLOW_S = 2.5  # p95 above 2 s: P2 (seed 000 Incident 6)


def drill(*, approve_as: str | None, console: Any, interactive: bool, show: bool) -> Scorecard:
    """Makes a real app answer every request in 2.5 s; performance-degradation clears its cache."""
    from integrations.prometheus import PrometheusTarget
    from integrations.service import ConfiguredAction, HttpCall, Service
    from runbooks.catalog import require

    spec = require("performance-degradation")
    params = spec.params(
        window_seconds=5,
        verify_window_seconds=5,
        lookback_seconds=60,
        step_seconds=1,
        deploy_window_seconds=5,
        approval_timeout_seconds=300,
        verify_timeout_seconds=30,
        verify_hold_seconds=5,
    )
    began = time.monotonic()
    with scraped_app(
        "faulty", SERVICE, history="app_build_info", samples=4, latency=NORMAL_S, rps=10
    ) as (app, prometheus):
        if show:
            console.print(
                f"[bold]Drill performance-degradation[/bold]: app {app.url} under its own"
                f" load (10 requests/s), scraped every second by Prometheus {prometheus.url}."
            )
        # The app's start is a deploy too: keep it out of the 5 s deploy window.
        time.sleep(max(0.0, began + 10 - time.monotonic()))
        app.control(latency_s=SLOW_S)
        injected = time.monotonic()
        if show:
            console.print(f"Cache cold: every endpoint now answers in {SLOW_S:g} s.")
        p95 = (
            "histogram_quantile(0.95, sum by (le) (rate("
            f'http_request_duration_seconds_bucket{{job="{SERVICE}"}}[5s])))'
        )
        wait_for(prometheus.url, p95, 2.0)
        cache = ConfiguredAction(
            description="Clear the app's cache so it is rebuilt from fresh data",
            risk="safe",
            http=HttpCall(method="POST", url=f"{app.url}/control", json={"latency_s": NORMAL_S}),
            undo="nothing to undo: the cache fills again as requests arrive",
        )
        service = Service(
            name=SERVICE,
            prometheus=PrometheusTarget(name="drill-prometheus", url=prometheus.url),
            actions={"clear_cache": cache},
        )
        card = play(
            spec,
            Severity.P2,
            service=service,
            params=params,
            injected=injected,
            approve_as=approve_as,
            console=console,
            interactive=interactive,
            show=show,
        )
    return card
