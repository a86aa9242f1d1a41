"""An in-process bus so a terminal can show findings and plans as they happen.

The runbook flow publishes; the CLI (in the same process) subscribes. Prefect
events carry the same facts to the server; this bus only feeds the screen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

__all__ = ["Listener", "publish", "subscribe", "unsubscribe"]

Listener = Callable[[str, dict[str, Any]], None]
_listeners: list[Listener] = []
log = logging.getLogger("oncall.live")


def subscribe(listener: Listener) -> None:
    _listeners.append(listener)


def unsubscribe(listener: Listener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def publish(kind: str, data: dict[str, Any]) -> None:
    """Tells every listener; a failing listener is logged, never breaks the runbook."""
    for listener in list(_listeners):
        try:
            listener(kind, data)
        except Exception:  # a display bug must not stop a remediation half-way
            log.exception("live listener failed on %s", kind)
