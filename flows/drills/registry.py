"""Every drill scenario, with one line about it: the registry imports the drill modules.

Plain data and no imports at module level, so ``oncall drill --help`` lists the scenarios
without loading pydantic, the sandbox or Prefect. A drill module is imported when its
scenario runs (:func:`load`); drill modules import :mod:`flows.drills.scorecard`, never
this registry or the package, so nothing loops.

A scenario's ``needs`` names what it needs from the machine beyond the Python packages
(:func:`missing` says exactly what is not there, before anything starts;
:mod:`flows.drills.needs` checks).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["DRILLS", "Scenario", "help_text", "load", "missing"]


@dataclass(frozen=True)
class Scenario:
    """One drill: its runbook's name, a line for ``--help``, and what it needs here."""

    name: str
    summary: str
    needs: tuple[str, ...] = ()

    @property
    def module(self) -> str:
        return f"flows.drills.{self.name.replace('-', '_')}"


DRILLS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("db-connections", "embedded PostgreSQL exhausted by idle transactions + locks"),
        Scenario("database-down", "a migration locks a table the API reads; embedded PostgreSQL"),
        Scenario("memory-leak", "a real process leaks after a deploy; Prometheus", ("prometheus",)),
        Scenario(
            "high-error-rate", "a feature fails 30 % of real requests; Prometheus", ("prometheus",)
        ),
        Scenario(
            "performance-degradation",
            "a cold cache makes every request take 2.5 s; Prometheus",
            ("prometheus",),
        ),
        Scenario("queue-backlog", "a RabbitMQ queue outgrows its too-slow workers", ("rabbitmq",)),
        Scenario("rollback", "a crash-looping deploy on a local Kubernetes API"),
        Scenario("app-down", "the app's process is killed; its health endpoint refuses"),
        Scenario("hms-failures", "the app's 100ms management token expired"),
        Scenario("provider-outage", "a provider's status page reports a major outage"),
    )
}


def help_text() -> str:
    """The scenarios, one line each, for ``oncall drill --help`` (click keeps the lines)."""
    width = max(len(name) for name in DRILLS)
    rows = [f"  {'all':<{width}}  every scenario below in turn, one scorecard table"]
    rows += [f"  {s.name:<{width}}  {s.summary}" for s in DRILLS.values()]
    return "\b\nScenarios:\n" + "\n".join(rows)


def load(name: str) -> Callable[..., Any]:
    """The scenario's ``drill(approve_as=, console=, interactive=, show=) -> Scorecard``."""
    return importlib.import_module(DRILLS[name].module).drill


def missing(name: str) -> list[str]:
    """What the scenario needs and this machine lacks, one sentence each (empty: all there)."""
    from flows.drills.needs import lacking

    return lacking(DRILLS[name].needs)
