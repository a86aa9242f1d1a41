"""Drill app-down: the app's process is killed; the runbook has its supervisor start it again.

The sandbox is a real app process (``faulty``, serving ``/health``) kept by a small local
supervisor, :class:`Supervisor`: the fault is a ``SIGKILL`` (a crash: the port refuses
connections, the health endpoint is down). The remediation is the service's configured
``restart`` action, ``POST /restart`` on the supervisor, which starts the app again on the
same port — what systemd or supervisord would do when asked.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from concurrent.futures import Future
from typing import Any

from checks.findings import Severity
from flows.drills.play import Player, scenario
from flows.drills.sandbox.loopback import LoopbackServer
from flows.drills.scorecard import Scorecard

__all__ = ["Supervisor", "drill"]

SERVICE = "drill-web"


class Supervisor:
    """Owns one sandbox app's process: ``crash()`` kills it, ``POST /restart`` starts it.

    The app is started and stopped on the supervisor's own thread: a sandbox process dies
    with the thread that started it (``LocalProcess``), and the HTTP handler threads are
    short-lived. ``restarts`` counts the restarts it was asked for.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.restarts = 0
        self.url = ""
        self._jobs: queue.Queue[tuple[str, Future[Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="supervisor", daemon=True)
        self._server = LoopbackServer(self._answer, methods=("POST",))

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            what, done = job
            try:
                if what == "start":
                    self.app.start().wait_ready()
                elif what == "restart":
                    self.app.stop()
                    self.app.start().wait_ready()
                    self.restarts += 1
                else:
                    self.app.stop()
                done.set_result(self.app.pid)
            except Exception as exc:  # told to the caller, who answers 500 or raises
                done.set_exception(exc)

    def _ask(self, what: str, timeout: float = 30.0) -> Any:
        done: Future[Any] = Future()
        self._jobs.put((what, done))
        return done.result(timeout)

    def crash(self) -> None:
        """The fault: SIGKILL, as the OOM killer or a segfault would end it."""
        pid = self.app.pid
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.app.running and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart_action(self) -> Any:
        """The service's configured ``restart`` action."""
        from integrations.service import ConfiguredAction, HttpCall

        return ConfiguredAction(
            description="Restart the app through its process supervisor",
            http=HttpCall(method="POST", url=f"{self.url}/restart", json={}),
            undo="nothing to undo: the same app starts again with the same config",
        )

    def _answer(self, method: str, path: str, headers: object, body: bytes) -> tuple[int, Any]:
        if path != "/restart":
            return 404, {"error": f"no route {path}"}
        try:
            return 200, {"restarted": True, "pid": self._ask("restart")}
        except Exception as exc:  # the restart failed: the caller's action fails with it
            return 500, {"error": str(exc)}

    def __enter__(self) -> Supervisor:
        self._thread.start()
        self._ask("start")
        self.url = self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()
        self._ask("stop")
        self._jobs.put(None)
        self._thread.join(timeout=10)


@scenario("app-down", Severity.P0)
def drill(player: Player) -> Scorecard:
    """Kills a real app's process and lets app-down restart it through its supervisor."""
    from flows.drills.sandbox.apps import SandboxApp
    from integrations.service import HttpEndpoint, Service

    with Supervisor(SandboxApp("faulty", rps=0)) as supervisor:
        app = supervisor.app
        supervisor.crash()
        player.inject(
            f"[bold]Drill app-down[/bold]: app {app.url} under a local process supervisor"
            f" {supervisor.url}; killed it (SIGKILL): {app.url}/health refuses connections."
        )
        service = Service(
            name=SERVICE,
            http=[HttpEndpoint(name="health", url=f"{app.url}/health", timeout_s=2)],
            actions={"restart": supervisor.restart_action()},
        )
        return player.play(service)
