"""Every runbook, listed once: its name and the module that declares it as ``RUNBOOK``.

A runbook module loads its checks and their clients when imported (about a second for all
of them), so the catalog imports one only when its runbook is asked for: ``oncall run X``
pays for X alone, and ``oncall runbooks`` reads cards cached from :func:`card`.
tests/test_rules.py checks that every module under runbooks/ is listed here and declares
the runbook of its name.
"""

from __future__ import annotations

import importlib
from typing import Any

from integrations.errors import ConfigError
from runbooks.engine.runbook import Runbook

__all__ = ["RUNBOOKS", "card", "get", "require", "runbooks"]

RUNBOOKS: dict[str, str] = {
    "db-connections": "runbooks.db_connections",
    "database-down": "runbooks.database_down",
    "rollback": "runbooks.rollback",
    "app-down": "runbooks.app_down",
    "hms-failures": "runbooks.hms_failures",
    "provider-outage": "runbooks.provider_outage",
    "memory-leak": "runbooks.memory_leak",
    "high-error-rate": "runbooks.high_error_rate",
    "performance-degradation": "runbooks.performance_degradation",
    "queue-backlog": "runbooks.queue_backlog",
}


def get(name: str) -> Runbook[Any] | None:
    """The runbook of that name (imports its module), or None."""
    module = RUNBOOKS.get(name)
    if module is None:
        return None
    runbook = importlib.import_module(module).RUNBOOK
    if runbook.name != name:  # a copied module that kept another runbook's name
        raise RuntimeError(f"{module} declares {runbook.name!r}, listed as {name!r}")
    return runbook


def require(name: str) -> Runbook[Any]:
    """The runbook of that name, or a ConfigError listing the known ones."""
    runbook = get(name)
    if runbook is None:
        raise ConfigError(f"unknown runbook {name!r} (known: {', '.join(RUNBOOKS)})")
    return runbook


def runbooks() -> list[Runbook[Any]]:
    """Every runbook, in catalog order (imports them all)."""
    return [require(name) for name in RUNBOOKS]


def card(runbook: Runbook[Any]) -> dict[str, Any]:
    """What ``oncall runbooks`` shows of a runbook, as plain JSON."""
    return {
        "name": runbook.name,
        "summary": runbook.summary,
        "diagnoses": list(runbook.diagnoses),
        "changes": [{"what": c.what, "risk": str(c.risk)} for c in runbook.changes],
        "targets": runbook.targets.describe(),
        "params": runbook.params.model_json_schema(),
    }
