"""The runbook flows as deployments run them: a service given by name is read from oncall.yaml.

Every runbook deployment (``oncall serve`` and prefect.yaml) has its entrypoint here, so a
run in a worker process resolves names the same way the CLI and incidents do.
"""

from __future__ import annotations

from flows.config import configured_policy, configured_service
from runbooks.app_down import app_down
from runbooks.db_connections import db_connections
from runbooks.engine.gate import set_policy_source
from runbooks.engine.kernel import set_service_resolver
from runbooks.high_error_rate import high_error_rate
from runbooks.hms_failures import hms_failures
from runbooks.memory_leak import memory_leak
from runbooks.performance_degradation import performance_degradation
from runbooks.provider_outage import provider_outage
from runbooks.queue_backlog import queue_backlog
from runbooks.rollback import rollback

__all__ = [
    "app_down",
    "db_connections",
    "high_error_rate",
    "hms_failures",
    "memory_leak",
    "performance_degradation",
    "provider_outage",
    "queue_backlog",
    "rollback",
]

set_service_resolver(configured_service)
set_policy_source(configured_policy)  # approvals: from this machine's oncall.yaml
