"""``oncall serve``: the webhook receiver and every flow as a Prefect deployment, in one process.

Deployments: ``incident/incident``, one per runbook (``db-connections/db-connections``
…, started from the Prefect UI with a service name and validated parameters) and
``health-sweep/health-sweep`` on the configured cron. Runs of these deployments
execute in this process's Prefect runner; ``prefect.yaml`` deploys the same flows to
a work pool for workers on other machines. Ctrl-C / SIGTERM stops cleanly: the
receiver stops taking requests, schedules are paused, spooled alerts stay on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
from pathlib import Path
from typing import Any

import uvicorn

from flows.intake import open_by_deployment
from flows.receiver import Dispatcher, create_app
from flows.server import ensure, prefect_home
from flows.spool import Spool
from runbooks.catalog import RUNBOOKS
from runbooks.config import OncallConfig, load_config

__all__ = ["build_deployments", "serve"]

log = logging.getLogger("oncall.serve")


class _Receiver(uvicorn.Server):
    """uvicorn without its own signal handling: ``serve`` owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        yield


async def build_deployments(config: OncallConfig, config_path: str) -> list[Any]:
    """The RunnerDeployments ``oncall serve`` runs (and prefect.yaml mirrors)."""
    from flows.incident import incident

    deployments = [
        await incident.ato_deployment(
            "incident",
            parameters={"config_path": config_path},
            tags=["oncall"],
            description="Incident parent flow: one run per incident.",
        )
    ]
    for spec in RUNBOOKS.values():
        deployments.append(
            await spec.load().ato_deployment(
                spec.name, tags=["oncall", f"runbook:{spec.name}"], description=spec.summary
            )
        )
    if config.health.enabled:
        from flows.health import health_sweep

        deployments.append(
            await health_sweep.ato_deployment(
                "health-sweep",
                cron=config.health.cron,
                parameters={"config_path": config_path},
                tags=["oncall", "health"],
                concurrency_limit=1,  # a slow sweep never overlaps the next one
                description="Checks every configured target.",
            )
        )
    return deployments


async def serve(
    config_path: str,
    *,
    host: str | None = None,
    port: int | None = None,
    limit: int | None = None,
    ready: asyncio.Event | None = None,
    runner: bool = True,
) -> None:
    """Runs the receiver, the spool dispatcher and the deployments until SIGINT/SIGTERM.

    ``runner=False`` runs the receiver alone, for a Prefect server whose deployments
    live in a work pool (prefect.yaml): incidents open there and workers, reading
    their own ONCALL_CONFIG, run them.
    """
    from prefect import aserve

    path = str(Path(config_path).resolve())
    config = load_config(path)
    os.environ["ONCALL_CONFIG"] = path  # runs of runbook deployments resolve services by name
    api_url = ensure()
    spool = Spool(prefect_home() / "oncall-spool")
    opener_path = path if runner else None  # pool workers read their own ONCALL_CONFIG
    dispatcher = Dispatcher(
        spool, api_url, functools.partial(open_by_deployment, config_path=opener_path)
    )
    app = create_app(config, spool, dispatcher)
    receiver = _Receiver(
        uvicorn.Config(
            app,
            host=host or config.receiver.host,
            port=port or config.receiver.port,
            log_level="warning",
            lifespan="off",
        )
    )
    deployments = await build_deployments(config, path) if runner else []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [
        asyncio.create_task(receiver.serve(), name="receiver"),
        asyncio.create_task(dispatcher.run(), name="dispatcher"),
    ]
    if deployments:
        tasks.append(
            asyncio.create_task(
                aserve(*deployments, limit=limit, print_starting_message=False), name="runner"
            )
        )
    log.info(
        "oncall serve: receiver on http://%s:%s, %d deployments",
        receiver.config.host,
        receiver.config.port,
        len(deployments),
    )
    if ready is not None:
        ready.set()
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    receiver.should_exit = True
    for task in tasks[1:]:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, timeout=15)
    for task in done:
        if task is not waiter and task.exception() is not None:
            raise task.exception()
