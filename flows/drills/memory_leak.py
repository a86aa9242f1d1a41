"""Drill memory-leak: a real process starts leaking with a deploy; the runbook restarts it.

The sandbox is a ``leaky`` app (real resident memory growth) scraped every second by a real
Prometheus. The remediation is the service's configured ``restart`` action: an HTTP call to
the app's ``/control`` that drops the memory it holds, as a fresh instance would. v2 stays
deployed and leaks on after the restart, so the honest score is *mitigated*: handed to rollback.
"""

from __future__ import annotations

import time
from typing import Any

from checks.findings import Severity
from flows.drills.play import play, scraped_app
from flows.drills.scorecard import Scorecard

__all__ = ["drill"]

SERVICE = "drill-api"


def drill(*, approve_as: str | None, console: Any, interactive: bool, show: bool) -> Scorecard:
    """Makes a real process leak memory after a deploy and lets memory-leak restart it."""
    from integrations.prometheus import PrometheusTarget
    from integrations.service import ConfiguredAction, HttpCall, Service
    from runbooks.catalog import require

    spec = require("memory-leak")
    params = spec.params(
        lookback_seconds=60,
        step_seconds=1,
        deploy_window_seconds=30,
        approval_timeout_seconds=300,
        verify_timeout_seconds=20,
        verify_hold_seconds=15,  # the leak shows its slope again within a few seconds
    )
    with scraped_app(
        "leaky",
        SERVICE,
        history="process_resident_memory_bytes",
        samples=5,
        paused=True,
        limit_mb=512,
    ) as (app, prometheus):
        if show:
            console.print(
                f"[bold]Drill memory-leak[/bold]: leaky app {app.url} (limit 512 MiB) scraped"
                f" every second by Prometheus {prometheus.url}; flat history recorded."
            )
        app.control(version="v2", leak=True, leak_mb_per_s=4)
        injected = time.monotonic()
        if show:
            console.print("Deployed v2, which leaks 4 MiB/s; letting the leak show…")
        time.sleep(8)  # enough growth for a straight-line fit to be sure
        restart = ConfiguredAction(
            description="Restart the app: drops the memory it holds, like a fresh instance",
            http=HttpCall(method="POST", url=f"{app.url}/control", json={"restart": True}),
            undo="nothing to undo: a restart only drops held memory",
        )
        service = Service(
            name=SERVICE,
            prometheus=PrometheusTarget(name="drill-prometheus", url=prometheus.url),
            actions={"restart": restart},
        )
        card = play(
            spec,
            Severity.P1,
            service=service,
            params=params,
            injected=injected,
            approve_as=approve_as,
            console=console,
            interactive=interactive,
            show=show,
            # The leaking version stays deployed: the restart only buys time.
            expect="mitigated",
        )
    return card
