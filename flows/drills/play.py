"""Runs a scenario's runbook on its sandbox, as a drill, and scores it from the fault."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any, Literal

from checks.findings import Severity
from flows.drills.scorecard import Expect, Scorecard, score

__all__ = ["play", "scraped_app"]


def play(
    spec: Any,
    severity: Severity,
    *,
    service: Any,
    params: Any,
    injected: float,
    approve_as: str | None,
    console: Any,
    interactive: bool,
    show: bool,
    expect: Expect = "fixed",
) -> Scorecard:
    """Runs ``spec``'s runbook on ``service`` (tagged ``drill``) and scores it; ``injected``
    is the ``time.monotonic()`` of the fault, the zero of every time on the scorecard."""
    from flows.execute import run_runbook  # Prefect: preloaded by `oncall drill` meanwhile

    started = time.monotonic() - injected
    report = run_runbook(
        spec,
        service=service,
        params=params,
        approve_as=approve_as,
        console=console,
        interactive=interactive,
        show=show,
        extra_tags=("drill",),
    )
    return score(spec.name, severity, report, started, expect)


@contextlib.contextmanager
def scraped_app(
    kind: Literal["leaky", "faulty"], job: str, *, history: str, samples: int, **flags: Any
) -> Iterator[tuple[Any, Any]]:
    """A sandbox app (``leaky`` or ``faulty``) scraped every second by a real Prometheus as
    ``job``; yields ``(app, prometheus)`` once ``history`` has ``samples`` samples.

    Prometheus missing is a ConfigError naming the package, before the app starts."""
    from flows.drills.sandbox.apps import SandboxApp
    from flows.drills.sandbox.prometheus import PrometheusProcess, wait_for

    prometheus = PrometheusProcess()
    with SandboxApp(kind, **flags) as app:
        prometheus.set_targets({job: [app.address]})
        with prometheus:
            wait_for(prometheus.url, f'count_over_time({history}{{job="{job}"}}[1m])', samples)
            yield app, prometheus
