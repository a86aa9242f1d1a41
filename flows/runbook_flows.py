"""The runbook flows, by the Python name of each runbook (``db_connections`` …).

Every runbook deployment (``oncall serve`` and prefect.yaml) has its entrypoint here, so a
run in a worker process resolves a service given by name from oncall.yaml, the same way the
CLI and incidents do, and its approval gate reads ``approvals:`` from that oncall.yaml. The
flows come from the catalog (:meth:`Runbook.flow`): adding a runbook adds its flow here
without a line of its own.
"""

from __future__ import annotations

from typing import Any

from flows.config_load import configured_policy, configured_service
from runbooks.catalog import RUNBOOKS, require
from runbooks.engine import kernel
from runbooks.engine.gate import set_policy_source

__all__ = ["flow_of"]

kernel.set_service_resolver(configured_service)
set_policy_source(configured_policy)  # approvals: from this machine's oncall.yaml


def flow_of(name: str) -> Any:
    """The Prefect flow of the runbook of that name (``db-connections``)."""
    return kernel.flow_of(require(name))


def __getattr__(entry: str) -> Any:
    """``flows.runbook_flows.db_connections``: what deployment entrypoints import."""
    for name in RUNBOOKS:
        if name.replace("-", "_") == entry:
            return flow_of(name)
    raise AttributeError(f"module {__name__!r} has no attribute {entry!r}")
