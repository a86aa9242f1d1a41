"""Runs a runbook flow in this process: the terminal is a live view and an approval channel.

The terminal prompt is just one more channel: it answers the gate through Prefect's
resume API like ``oncall approve`` and the Prefect UI do, so whoever decides first
wins and the decision is recorded the same way. The view itself is
:class:`flows.live_view.LiveView`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from prefect import tags
from prefect.logging.handlers import PrefectConsoleHandler
from rich.console import Console

from flows.config_load import configured_policy
from flows.live_view import LiveView
from runbooks.engine import live
from runbooks.engine.gate import set_policy_source
from runbooks.engine.guard import preapproval, seal_context, verified_os_identity
from runbooks.engine.kernel import flow_of
from runbooks.engine.model import RunbookReport, RunContext
from runbooks.engine.runbook import Runbook

# approvals: from the oncall.yaml this process uses (--config, $ONCALL_CONFIG, ./)
set_policy_source(configured_policy)

__all__ = ["LiveView", "quiet_prefect_console", "run_runbook"]


def quiet_prefect_console() -> None:
    """Keeps Prefect's own INFO lines off the terminal; they still reach the Prefect API."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.setLevel(logging.WARNING)


def run_runbook(
    spec: Runbook[Any],
    *,
    service: Any,
    params: Any,
    dry_run: bool = False,
    approve_as: str | None = None,
    context: Any = None,
    console: Console | None = None,
    interactive: bool = False,
    show: bool = True,
    extra_tags: tuple[str, ...] = (),
) -> RunbookReport:
    """Runs the runbook's flow here and returns its report."""
    from flows.server import wait_if_starting

    quiet_prefect_console()
    flow = flow_of(spec)
    wait_if_starting()  # a server the CLI started without waiting (first use)
    view = LiveView(
        console or Console(),
        interactive=interactive,
        show=show,
        verify_timeout_s=getattr(params, "verify_timeout_seconds", None),
    )
    live.subscribe(view)
    if context is None:  # who started it: the OS user of this process, sealed for this run
        context = RunContext(requested_by=verified_os_identity())
    context = seal_context(context, runbook=spec.name, target=service.name)
    # --approve-as lives in this process (the one running the flow), never in a parameter.
    pre = preapproval(approve_as) if approve_as else contextlib.nullcontext()
    try:
        with tags("oncall", f"runbook:{spec.name}", *extra_tags), pre:
            return asyncio.run(
                flow(service=service, params=params, dry_run=dry_run, context=context)
            )
    finally:
        live.unsubscribe(view)
        view.close()
