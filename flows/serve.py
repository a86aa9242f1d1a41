"""``oncall serve``: the webhook receiver and every flow as a Prefect deployment.

The receiver answers in a process of its own (:mod:`flows.receiver_process`); the
dispatcher, the incidents and Prefect's runner work in this one.

Deployments: ``incident/incident``, one per runbook (``db-connections/db-connections``
…, started from the Prefect UI with a service name and validated parameters) and
``health-sweep/health-sweep``, ``drills/drills`` (game days, :mod:`flows.drills.schedule`)
and ``kpi-report/kpi-report`` (the weekly report, :mod:`flows.kpi.flow`) on their configured
crons. Runs of these deployments
execute in this process's Prefect runner; ``prefect.yaml`` deploys the same flows to
a work pool for workers on other machines. Ctrl-C / SIGTERM stops cleanly: the
receiver stops taking requests, schedules are paused, spooled alerts stay on disk.

An alert's incident runs in this process by default (``receiver.incidents:
in-process``, :class:`LocalIncidents`): no process to start, so its first finding is in
Prefect about a second after the alert instead of ~5 s (two deployment-run hops, each a
runner poll and a new Python process). ``incidents: deployment`` keeps the per-run
processes, whose runbooks suspend at their gates and free their worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flows.config import OncallConfig
from flows.config_load import load_config
from flows.intake import creation_tags, open_by_deployment
from flows.prefect_api import PrefectAPI
from flows.receiver import Dispatcher
from flows.receiver_process import ReceiverProcess, listen
from flows.serve_log import ServeLog, announce, stopper
from flows.server import api_protected, ensure, is_loopback
from flows.spool import Spool, store_url
from integrations.alerts import Alert
from runbooks.catalog import runbooks
from runbooks.engine import live
from runbooks.engine.kernel import flow_of

__all__ = ["LocalIncidents", "build_deployments", "exposure_warnings", "serve"]

log = logging.getLogger("oncall.serve")


class LocalIncidents:
    """Opens incidents as flow runs that run in this process (``receiver.incidents: in-process``).

    The run is created first (Pending, with the intake's tags, so the next alert of the
    service joins it at once) and then executed here by Prefect's engine; its runbooks run
    as subflows and wait at their gates with a pause, polled every second. The run records
    its owner (``host:pid``, Prefect's ``infrastructure_pid``): an incident whose ``oncall
    serve`` died is marked Crashed by the next one on that host (:meth:`reap`), so a new
    alert opens a new incident instead of joining one nobody runs.

    Incidents run on an event loop of their own, in a thread: a flow engine on the main
    thread installs Prefect's SIGTERM handler (it raises inside whatever runs), which would
    take ``oncall serve``'s clean shutdown away; off the main thread it cannot.
    """

    def __init__(self, config_path: str) -> None:
        self.config_path = config_path
        self.host = socket.gethostname()
        self.owner = f"{self.host}:{os.getpid()}"
        self.running: dict[str, asyncio.Task[Any]] = {}  # touched on self.loop only
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="oncall-incidents", daemon=True
        )
        self.thread.start()

    async def open(self, alert: Alert, intake: dict[str, str]) -> str:
        """Creates the incident's run and starts it; returns the run id. The intake's
        registration id is the run's idempotency key: a retry finds the same run."""
        return await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(self._open(alert, intake), self.loop)
        )

    async def _open(self, alert: Alert, intake: dict[str, str]) -> str:
        from prefect.client.schemas.objects import FlowRun
        from prefect.flow_engine import run_flow_async
        from prefect.settings import PREFECT_API_URL

        from flows.incident import incident

        parameters = {"alert": alert, "config_path": self.config_path, "intake": intake}
        body = {
            "parameters": {**parameters, "alert": alert.model_dump(mode="json")},
            "tags": creation_tags(alert),
            "state": {"type": "PENDING", "name": "Pending"},
            "idempotency_key": f"oncall-intake-{intake['registration']}",
        }

        def create() -> dict[str, Any]:
            with PrefectAPI(str(PREFECT_API_URL.value())) as api:
                run = api.create_run(incident.name, body)
                if run["state"]["type"] == "PENDING":  # ours: whose process runs it (reap)
                    api.update_run(run["id"], infrastructure_pid=self.owner)
                    run["infrastructure_pid"] = self.owner
                return run

        created = await asyncio.to_thread(create)
        run_id = str(created["id"])
        if created["state"]["type"] != "PENDING" or run_id in self.running:
            return run_id  # created and started before (a retried opening)
        run = FlowRun.model_validate(created)
        self.running[run_id] = asyncio.create_task(
            run_flow_async(incident, flow_run=run, parameters=parameters, return_type="state"),
            name=f"incident {run_id}",
        )
        self.running[run_id].add_done_callback(lambda _: self.running.pop(run_id, None))
        return run_id

    def reap(self, api: PrefectAPI, store: Spool | None = None) -> list[str]:
        """Marks Crashed the open incidents of a dead ``oncall serve`` on this host (and
        closes their intake registrations: the next alert opens a new incident)."""
        reaped = []
        for run in api.incident_runs(open_only=True):
            host, _, pid = str(run.get("infrastructure_pid") or "").rpartition(":")
            if run.get("deployment_id") or host != self.host or not pid.isdigit():
                continue
            if _alive(int(pid)) or run["id"] in self.running:
                continue
            why = f"oncall serve (pid {pid}) stopped while this incident was open"
            reaped += _crash(api, run, why, "; a new alert opens a new incident")
            if store is not None:
                store.close_run(run["id"], why)
        return reaped

    async def stop(self, api_url: str, timeout: float = 15.0) -> None:
        """Cancels the incidents still running here and ends whatever they leave open.

        A cancelled runbook subflow paused at its gate can stay Paused on the server: it
        is forced to Crashed, so no gate is left for `oncall pending` to list with nobody
        to act on an approval."""
        ids = await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(self._cancel_all(timeout), self.loop)
        )
        self.loop.call_soon_threadsafe(self.loop.stop)
        if not ids:
            return

        def end_all() -> None:
            why = f"oncall serve (pid {os.getpid()}) stopped while this incident was open"
            with PrefectAPI(api_url) as api:
                for run_id in ids:
                    _crash(api, api.flow_run(run_id), why, "")

        try:
            await asyncio.to_thread(end_all)
        except Exception as exc:  # Prefect away: the next oncall serve reaps them
            log.warning("could not end the incidents left open: %s", exc)

    async def _cancel_all(self, timeout: float) -> list[str]:
        ids, tasks = list(self.running), list(self.running.values())
        if tasks:
            log.warning(
                "oncall serve stopping: ending %d open incident(s) and their runbooks"
                " (a new alert opens a new incident)",
                len(tasks),
            )
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        return ids


_OPEN = ("RUNNING", "PAUSED", "PENDING", "SCHEDULED")


def _crash(api: PrefectAPI, run: dict[str, Any], why: str, more: str) -> list[str]:
    """Forces an in-process incident run and its in-process runbook runs, where still
    open, to Crashed; returns their ids."""
    crashed = []
    if run["state"]["type"] in _OPEN:
        api.set_state(run["id"], "CRASHED", why + more)
        crashed.append(run["id"])
    for tag in (t for t in run.get("tags", []) if t.startswith("INC-")):
        children = api.flow_runs(
            {
                "flow_runs": {
                    "tags": {"all_": [f"incident:{tag}"]},
                    "state": {"type": {"any_": list(_OPEN)}},
                }
            }
        )
        for child in children:
            if not child.get("deployment_id"):
                api.set_state(child["id"], "CRASHED", why)
                crashed.append(child["id"])
    return crashed


def exposure_warnings(api_url: str) -> list[str]:
    """What is unsafe about the Prefect API this serve uses (docs/security.md)."""
    if is_loopback(api_url):
        return []
    out = []
    if api_protected(api_url) is False:
        out.append(
            f"WARNING: the Prefect API {api_url} answers WITHOUT authentication beyond this"
            " machine: anyone who reaches it can start runs and decide approvals as the"
            " Prefect UI. Set PREFECT_SERVER_API_AUTH_STRING on the server (docs/security.md)."
        )
    if urlsplit(api_url).scheme != "https":
        out.append(
            f"WARNING: the Prefect API {api_url} is reached over plain HTTP beyond this"
            " machine: its basic-auth secret and every decision cross the network in clear."
        )
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


# The cron deployments: name -> (tag, description). One run of each at a time: a slow sweep
# never overlaps the next one, and game days share the machine.
_SCHEDULED = {
    "health-sweep": ("health", "Checks every configured target."),
    "drills": ("drills", "Game day in the sandbox; a failing drill opens a P3 incident."),
    "kpi-report": ("report", "The on-call KPI report as the artifact oncall-report."),
}


async def _scheduled(flow: Any, name: str, cron: str, config_path: str) -> Any:
    """A cron deployment of ``flow`` that never overlaps its own previous run."""
    tag, description = _SCHEDULED[name]
    return await flow.ato_deployment(
        name,
        cron=cron,
        parameters={"config_path": config_path},
        tags=["oncall", tag],
        concurrency_limit=1,
        description=description,
    )


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
    from prefect.deployments.runner import EntrypointType

    from flows import runbook_flows

    for runbook in runbooks():
        deployment = await flow_of(runbook).ato_deployment(
            runbook.name, tags=["oncall", f"runbook:{runbook.name}"], description=runbook.summary
        )
        # Runs import the flow through flows.runbook_flows, which resolves service names.
        deployment.entrypoint = f"{runbook_flows.__name__}.{runbook.entry}"
        deployment._entrypoint_type = EntrypointType.MODULE_PATH
        deployments.append(deployment)
    if config.health.enabled:
        from flows.health import health_sweep

        deployments.append(
            await _scheduled(health_sweep, "health-sweep", config.health.cron, config_path)
        )
    if config.drills.enabled:
        from flows.drills.schedule import drills

        deployments.append(await _scheduled(drills, "drills", config.drills.cron, config_path))
    if config.report.enabled:
        from flows.kpi.flow import kpi_report

        deployments.append(
            await _scheduled(kpi_report, "kpi-report", config.report.cron, config_path)
        )
    return deployments


async def _runner(
    deployments: list[Any], limit: int | None, on_sigterm: Callable[..., Any], scheduled: list[Any]
) -> Any:
    """Prefect's runner for the deployments, as ``prefect.aserve`` makes it, except for
    SIGTERM: ``Runner.start`` puts its ``handle_sigterm`` on the main thread, and Prefect's
    raises SystemExit wherever the process is (serve's clean stop would not run, and the
    incidents here would stay Running with nobody to end them). Ours calls ``on_sigterm``.
    Schedules are paused by ``serve`` (``scheduled`` collects the ids), not by the runner."""
    from prefect.runner import Runner

    class _Runner(Runner):
        def handle_sigterm(self, *args: Any, **kwargs: Any) -> None:
            on_sigterm()

    runner = _Runner(limit=limit, pause_on_shutdown=False)
    for deployment in deployments:
        # sync_compatible: a coroutine when called from async code, as here.
        added = runner.add_deployment(deployment)
        deployment_id = await added if inspect.isawaitable(added) else added
        if deployment.schedules:
            scheduled.append(deployment_id)
    return runner


async def _run_deployments(
    deployments: list[Any], limit: int | None, on_sigterm: Callable[..., Any], scheduled: list[Any]
) -> None:
    """Registers the deployments with a runner, then runs it until cancelled."""
    runner = await _runner(deployments, limit, on_sigterm, scheduled)
    await runner.start()


async def _pause_schedules(deployment_ids: list[Any]) -> None:
    """What ``pause_on_shutdown`` does, for the deployments that have a schedule only:
    Prefect's pauses every deployment (12 calls, ~2 s of a stop); these are one or two.
    One after the other: concurrent writes only make SQLite wait."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        for deployment_id in deployment_ids:
            await client.pause_deployment(deployment_id)


async def serve(
    config_path: str,
    *,
    host: str | None = None,
    port: int | None = None,
    limit: int | None = None,
    ready: asyncio.Event | None = None,
    runner: bool = True,
    on_stopping: Callable[[], None] | None = None,
) -> None:
    """Runs the receiver, the spool dispatcher and the deployments until SIGINT/SIGTERM.

    ``runner=False`` runs the receiver alone, for a Prefect server whose deployments
    live in a work pool (prefect.yaml): incidents open there and workers, reading
    their own ONCALL_CONFIG, run them. ``on_stopping`` is called as soon as a stop is
    asked for (the CLI bounds how long stopping may take).
    """
    path = str(Path(config_path).resolve())
    config = load_config(path)
    bind = (host or config.receiver.host, port or config.receiver.port)
    sock = listen(*bind)  # a taken port: one line, before anything starts or changes
    os.environ["ONCALL_CONFIG"] = path  # runs of runbook deployments resolve services by name
    api_url = ensure()
    for line in exposure_warnings(api_url):  # on stderr whatever logging is set up
        log.warning(line)
        sys.stderr.write(f"oncall serve: {line}\n")
    spool = await asyncio.to_thread(
        Spool, store_url(config), dedup_window_s=config.receiver.dedup_window
    )
    local = None
    if runner and config.receiver.incidents == "in-process":
        local = LocalIncidents(path)
        with PrefectAPI(api_url) as api:
            for run_id in await asyncio.to_thread(local.reap, api, spool):
                log.warning(
                    "run %s was left open by a stopped oncall serve: marked Crashed", run_id
                )
        opener = local.open
    else:  # pool workers read their own ONCALL_CONFIG
        opener = functools.partial(open_by_deployment, config_path=path if runner else None)
    say = ServeLog()
    dispatcher = Dispatcher(spool, api_url, opener, on_result=say.alert)
    # The receiver answers in a process of its own (flows/receiver_process.py): its 202s
    # wait for no incident, dispatch or runner work under this process's GIL.
    receiver = ReceiverProcess(sock, path, api_url, dispatcher)
    receiving = asyncio.create_task(receiver.run(), name="receiver")
    deployments = await build_deployments(config, path) if runner else []
    stop = asyncio.Event()
    request_stop = stopper(asyncio.get_running_loop(), stop, on_stopping)
    # Plain handlers, not the loop's: Python runs them in the main thread as soon as the
    # signal arrives, even while the loop is busy (an incident's first imports), so the
    # stop (and the CLI's deadline) starts at the signal, not when the loop gets to it.
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    receiver_url = f"http://{bind[0]}:{bind[1]}"
    # The stop is awaited from the first moment: registering the deployments takes seconds
    # on a busy Prefect, and a SIGTERM then must not wait for it to finish.
    waiter = asyncio.create_task(stop.wait())
    # The receiver's process started while the deployments registered; once it is loaded,
    # serve is announced and it answers.
    loaded = asyncio.create_task(receiver.loaded.wait())
    await asyncio.wait([loaded, receiving, waiter], return_when=asyncio.FIRST_COMPLETED)
    loaded.cancel()
    if receiver.loaded.is_set():
        await announce(say, config, path, api_url, receiver_url, deployments, local is not None)
        receiver.answer()
    live.subscribe(say)  # gates, decisions and incidents running in this process
    tasks: list[asyncio.Task[Any]] = [
        receiving,
        asyncio.create_task(dispatcher.run(), name="dispatcher"),
    ]
    scheduled: list[Any] = []  # ids of deployments with a schedule, paused on the way out
    if deployments:
        started = _run_deployments(deployments, limit, request_stop, scheduled)
        tasks.append(asyncio.create_task(started, name="runner"))
    if ready is not None:
        ready.set()
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    request_stop()  # a task that ended by itself stops the rest, within the same bounds
    live.unsubscribe(say)
    receiver_stopped = asyncio.create_task(receiver.stop())  # alongside the rest of the stop
    if local is not None:
        await local.stop(api_url)
    if scheduled:
        with contextlib.suppress(Exception):  # Prefect away: the schedule keeps, as on a crash
            await asyncio.wait_for(_pause_schedules(scheduled), 2)
    for task in tasks[1:]:
        task.cancel()
    for task in [receiver_stopped, *tasks]:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, timeout=15)
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    for task in done:
        failure = None if task is waiter else task.exception()
        if failure is not None:
            raise failure
