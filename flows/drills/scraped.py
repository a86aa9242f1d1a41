"""The drills on a sandbox app scraped every second by a real Prometheus.

memory-leak, high-error-rate and performance-degradation each start an app
(:class:`flows.drills.sandbox.apps.SandboxApp`), let Prometheus record its history, change
it through its ``/control``, and hand the runbook a service whose remedy is an HTTP call to
that same ``/control``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any, Literal

from flows.drills.play import Player

__all__ = ["FAST_WINDOWS", "SCRAPE", "ScrapedApp", "loaded_app", "scraped_app"]

# Prometheus scrapes every second and the drills' history is a minute long.
SCRAPE: dict[str, Any] = {"lookback_seconds": 60, "step_seconds": 1}
# The request-metric drills: 5 s windows, and a deploy within 5 s counts as the change.
FAST_WINDOWS: dict[str, Any] = {
    "window_seconds": 5,
    "verify_window_seconds": 5,
    **SCRAPE,
    "deploy_window_seconds": 5,
}


class ScrapedApp:
    """A sandbox app and the Prometheus that scrapes it as ``job``, the drill's service."""

    def __init__(self, app: Any, prometheus: Any, job: str) -> None:
        self.app, self.prometheus, self.job = app, prometheus, job

    def wait_for(self, promql: str, at_least: float) -> None:
        """Waits until Prometheus answers ``promql`` with ``at_least`` (the fault shows)."""
        from flows.drills.sandbox.prometheus import wait_for

        wait_for(self.prometheus.url, promql, at_least)

    def control_action(self, description: str, json: dict[str, Any], **fields: Any) -> Any:
        """A configured action that POSTs ``json`` to the app's ``/control``."""
        from integrations.service import ConfiguredAction, HttpCall

        call = HttpCall(method="POST", url=f"{self.app.url}/control", json=json)
        return ConfiguredAction(description=description, http=call, **fields)

    def service(self, **actions: Any) -> Any:
        """The service the runbook gets: the job, its Prometheus, and ``actions`` by name."""
        from integrations.prometheus import PrometheusTarget
        from integrations.service import Service

        target = PrometheusTarget(name="drill-prometheus", url=self.prometheus.url)
        return Service(name=self.job, prometheus=target, actions=actions)


@contextlib.contextmanager
def scraped_app(
    kind: Literal["leaky", "faulty"], job: str, *, history: str, samples: int, **flags: Any
) -> Iterator[ScrapedApp]:
    """A sandbox app (``leaky`` or ``faulty``) scraped every second by a real Prometheus as
    ``job``; yields once ``history`` has ``samples`` samples.

    Prometheus missing is a ConfigError naming the package, before the app starts."""
    from flows.drills.sandbox.apps import SandboxApp
    from flows.drills.sandbox.prometheus import PrometheusProcess, wait_for

    prometheus = PrometheusProcess()
    with SandboxApp(kind, **flags) as app:
        prometheus.set_targets({job: [app.address]})
        with prometheus:
            wait_for(prometheus.url, f'count_over_time({history}{{job="{job}"}}[1m])', samples)
            yield ScrapedApp(app, prometheus, job)


@contextlib.contextmanager
def loaded_app(
    player: Player, job: str, intro: str, *, latency: float, rps: int
) -> Iterator[ScrapedApp]:
    """A ``faulty`` app under its own load (``rps``, answering in ``latency`` s), scraped as
    ``job``; says ``intro`` (formatted with the ``app`` and ``prometheus`` URLs) and yields
    once the app's start, a deploy too, is out of the 5 s deploy window."""
    began = time.monotonic()
    with scraped_app(
        "faulty", job, history="app_build_info", samples=4, latency=latency, rps=rps
    ) as scraped:
        player.say(intro.format(app=scraped.app.url, prometheus=scraped.prometheus.url))
        time.sleep(max(0.0, began + 10 - time.monotonic()))
        yield scraped
