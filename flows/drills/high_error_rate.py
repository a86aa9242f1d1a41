"""Drill high-error-rate: a "feature" starts failing 30 % of requests; the runbook turns it off.

The sandbox is a ``faulty`` app serving real HTTP with its own load, scraped every second by a
real Prometheus. The fault is injected through the app's ``/control`` (``error_rate``); the
remediation is the service's configured ``disable_feature_flag`` action, an HTTP call to that
same ``/control`` setting the error rate back to 0 — the sandbox's feature flag.
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
ERROR_RATE = 0.3  # above 10 %: P0 (seed 000 Part H)


def drill(*, approve_as: str | None, console: Any, interactive: bool, show: bool) -> Scorecard:
    """Makes a real app fail 30 % of requests and lets high-error-rate switch the flag off."""
    from integrations.prometheus import PrometheusTarget
    from integrations.service import ConfiguredAction, HttpCall, Service
    from runbooks.catalog import require

    spec = require("high-error-rate")
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
        "faulty", SERVICE, history="app_build_info", samples=4, latency=0.02, rps=20
    ) as (app, prometheus):
        if show:
            console.print(
                f"[bold]Drill high-error-rate[/bold]: faulty app {app.url} under its own"
                f" load, scraped every second by Prometheus {prometheus.url}."
            )
        # The app's start is a deploy too: keep it out of the 5 s deploy window.
        time.sleep(max(0.0, began + 10 - time.monotonic()))
        app.control(error_rate=ERROR_RATE)
        injected = time.monotonic()
        if show:
            console.print(f"Feature on: every endpoint now fails {ERROR_RATE:.0%} of requests.")
        errors = f'sum(rate(http_requests_total{{job="{SERVICE}",status=~"5.."}}[5s]))'
        wait_for(prometheus.url, errors, 1.0)
        flag = ConfiguredAction(
            description="Disable the failing feature",
            risk="risky",
            http=HttpCall(method="POST", url=f"{app.url}/control", json={"error_rate": 0}),
            undo=f"POST {app.url}/control {{'error_rate': {ERROR_RATE}}} turns it back on",
        )
        service = Service(
            name=SERVICE,
            prometheus=PrometheusTarget(name="drill-prometheus", url=prometheus.url),
            actions={"disable_feature_flag": flag},
        )
        card = play(
            spec,
            Severity.P0,
            service=service,
            params=params,
            injected=injected,
            approve_as=approve_as,
            console=console,
            interactive=interactive,
            show=show,
        )
    return card
