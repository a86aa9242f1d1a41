"""What drills need from the machine beyond Python packages, and one sentence when it lacks it.

Shared by the registry (checked before a drill or a game day starts) and the drills that
connect to the machine's services themselves.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

__all__ = ["AMQP_URL", "MANAGEMENT_URL", "amqp_url", "lacking", "reachable"]

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
MANAGEMENT_URL = "http://127.0.0.1:15672"


def amqp_url() -> str:
    """Where the queue-backlog drill finds RabbitMQ (``ONCALL_DRILL_AMQP_URL``)."""
    return os.environ.get("ONCALL_DRILL_AMQP_URL", AMQP_URL)


def reachable(url: str, default_port: int) -> bool:
    """Whether something listens at the URL's host and port."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def _prometheus() -> str | None:
    from flows.drills.sandbox.prometheus import SandboxUnavailable, find_binary

    try:
        find_binary("prometheus")
    except SandboxUnavailable as exc:
        return f"{exc} or set ONCALL_PROMETHEUS_BIN"
    return None


def _rabbitmq() -> str | None:
    url = amqp_url()
    if reachable(url, 5672):
        return None
    where = urlsplit(url)
    return (
        f"needs RabbitMQ at {where.hostname}:{where.port or 5672} (guest/guest, allowed to"
        " create and delete queues): install and start rabbitmq-server, or set"
        " ONCALL_DRILL_AMQP_URL"
    )


_CHECKS: dict[str, Callable[[], str | None]] = {"prometheus": _prometheus, "rabbitmq": _rabbitmq}


def lacking(needs: Iterable[str]) -> list[str]:
    """One sentence for each of ``needs`` this machine lacks (empty: all there)."""
    return [why for need in needs if (why := _CHECKS[need]()) is not None]
