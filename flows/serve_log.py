"""What ``oncall serve`` says, how it says it without ever waiting on its reader, and how it
is told to stop.

:class:`ServeLog` prints the start banner (receiver URL, Prefect UI, deployments, the
health sweep's schedule) and then one quiet, timestamped line per alert received,
incident declared, gate waiting, decision and resolution.

:class:`Outlet` keeps a slow, full or closed stdout from stopping the service: when
stdout/stderr are not a terminal, the process writes into a pipe of its own and a
relay thread copies that to the real destination, 4 KiB at a time and only when it
can take them (``select``), so the writers never block. When the destination stays
full, new output is dropped and counted; when it is gone (the reader died), output
is discarded. Child processes (Prefect's runner starts flow runs in them) inherit the
same pipe. Without this, one line printed into a full pipe froze the event loop, and
with it the SIGTERM handler.

:func:`stopper` is serve's SIGINT/SIGTERM handler; :func:`exit_within` is the CLI's
bound on how long a stop may take after the signal.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import select
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

__all__ = ["Outlet", "ServeLog", "announce", "exit_within", "stopper"]

_CHUNK = 4096  # PIPE_BUF: a write this size into a pipe select() calls writable never blocks
_BACKLOG = 1 << 20  # output held for a slow reader before new output is dropped


class _Relay:
    def __init__(self, source: int, sink: int) -> None:
        self.source, self.sink = source, sink
        self.pending = bytearray()
        self.dropped = 0
        self.gone = False
        self.thread = threading.Thread(target=self._run, name=f"oncall-outlet-{sink}", daemon=True)

    def _run(self) -> None:
        while True:
            wanted_out = [self.sink] if self.pending and not self.gone else []
            readable, writable, _ = select.select([self.source], wanted_out, [], 0.5)
            if readable:
                data = os.read(self.source, 65536)
                if not data:
                    return
                if self.gone:
                    continue
                room = _BACKLOG - len(self.pending)
                self.pending += data[:room]
                self.dropped += max(0, len(data) - room)
            if writable:
                self._write()

    def _write(self) -> None:
        if self.dropped and len(self.pending) < _BACKLOG // 2:
            note = f"\n[oncall: {self.dropped} bytes of output dropped: nobody was reading]\n"
            self.pending[:0] = note.encode()
            self.dropped = 0
        try:
            written = os.write(self.sink, bytes(self.pending[:_CHUNK]))
        except (BrokenPipeError, OSError):
            self.gone, self.pending = True, bytearray()  # the reader is gone: discard
            return
        del self.pending[:written]


class Outlet:
    """Stdout and stderr through a relay that never blocks this process (see the module)."""

    def __init__(self) -> None:
        self.relays: list[_Relay] = []

    @classmethod
    def install(cls, fds: tuple[int, ...] = (1, 2)) -> Outlet:
        """Puts the relay between this process and every fd of ``fds`` that is not a tty."""
        outlet = cls()
        targets: dict[tuple[int, int], int] = {}  # one relay per destination (2>&1 shares)
        for fd in fds:
            try:
                if os.isatty(fd):
                    continue
                stat = os.fstat(fd)
            except OSError:
                continue
            key = (stat.st_dev, stat.st_ino)
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            if key not in targets:
                read_end, write_end = os.pipe()
                relay = _Relay(read_end, os.dup(fd))
                relay.thread.start()
                outlet.relays.append(relay)
                targets[key] = write_end
            os.dup2(targets[key], fd)
        for write_end in targets.values():
            os.close(write_end)
        if outlet.relays:  # registered first, so it runs after the handlers that still print
            atexit.register(outlet.drain, 0.5)
        return outlet

    def drain(self, timeout: float) -> None:
        """Gives the relays up to ``timeout`` seconds to hand over what is pending."""
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        deadline = time.monotonic() + timeout
        for relay in self.relays:
            while time.monotonic() < deadline and not relay.gone:
                unread = select.select([relay.source], [], [], 0)[0]
                if not unread and not relay.pending:
                    break
                time.sleep(0.01)


def exit_within(seconds: float, outlet: Outlet | None, say: Callable[[str], None]) -> None:
    """Ends the process ``seconds`` from now if it has not ended by itself (exit status 1).

    A clean stop takes about a second; this bounds the worst case (a Prefect API that
    does not answer, a flow that ignores cancellation). Incidents left open then are
    marked Crashed by the next ``oncall serve``.
    """

    def fire() -> None:
        say(f"oncall serve: stopping (at most {seconds:g} s)")
        time.sleep(seconds)
        say(
            "oncall serve: stopping took too long; exiting now (the next oncall serve marks"
            " incidents left open as Crashed)"
        )
        if outlet is not None:
            outlet.drain(0.3)
        os._exit(1)

    threading.Thread(target=fire, name="oncall-stop-deadline", daemon=True).start()


class ServeLog:
    """The banner and one line per event. ``clock`` is injectable (tests freeze it)."""

    def __init__(
        self, stream: TextIO | None = None, clock: Callable[[], datetime] | None = None
    ) -> None:
        self.stream = stream
        self.clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        stream = self.stream or sys.stdout
        with self._lock, contextlib.suppress(OSError, ValueError):
            stream.write(text + "\n")
            stream.flush()

    def line(self, kind: str, text: str) -> None:
        self.write(f"{self.clock():%H:%M:%S} {kind:<9}{text}")

    def banner(
        self,
        *,
        config_path: str,
        receiver_url: str,
        ui_url: str,
        deployments: list[str],
        schedules: list[str],
        incidents: str,
    ) -> None:
        endpoints = "POST /alerts/{alertmanager,generic,sentry,pagerduty}, /approvals/slack"
        self.write(f"oncall serve: config {config_path}")
        self.write(f"  receiver      {receiver_url}  ({endpoints}; GET /healthz)")
        self.write(f"  Prefect UI    {ui_url}")
        if deployments:
            self.write(f"  deployments   {len(deployments)}: {', '.join(deployments)}")
        else:
            self.write("  deployments   none here (--no-runner: workers run them)")
        for i, schedule in enumerate(schedules):
            self.write(f"  {'schedules' if i == 0 else '':<13} {schedule}")
        self.write(f"  incidents     {incidents}")
        self.write(
            "Ctrl-C or SIGTERM stops. One line per alert, incident, gate, decision and resolution:"
        )

    # -- events --------------------------------------------------------------------------

    def alert(self, alert: Any, submission: Any) -> None:
        """The intake's answer for one alert (opened, joined or ignored)."""
        head = f"{alert.service} {alert.title!r} ({alert.source}, {alert.status})"
        run = submission.incident_run_id
        outcome = {
            "opened": f"opened an incident (flow run {run})",
            "joined": f"joined the open incident (flow run {run})",
        }.get(submission.action, f"ignored: {submission.reason}")
        self.line("alert", f"{head} → {outcome}")

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        """A live event from the incidents and runbooks running in this process."""
        if kind == "gate":
            run = data.get("flow_run_id") or "?"
            until = str(data.get("timeout_at") or "")[11:16]
            self.line(
                "gate",
                f"{data.get('runbook')} on {data.get('target')} waits for approval:"
                f" {data.get('summary')} — oncall approve {run} --as NAME, or the Prefect UI"
                + (f" (times out {until} UTC)" if until else ""),
            )
        elif kind == "approval":
            a = data["approval"]
            verdict = "approved" if a.approved else "rejected"
            who = f" (identity {a.identity})" if a.identity else ""
            self.line("decision", f"plan {verdict} by {a.approver} via {a.channel}{who}")
        elif kind == "timeline" and data["entry"].kind in ("declared", "resolved"):
            entry = data["entry"]
            self.line(entry.kind, f"{data['incident_id']}: {entry.text}")


async def announce(
    say: ServeLog,
    config: Any,
    path: str,
    api_url: str,
    receiver_url: str,
    deployments: list[Any],
    in_process: bool,
) -> None:
    """Prints the banner: where the receiver and the UI are, what runs, and when the
    scheduled deployments (the health sweep, game days) next run."""
    schedules = [await _schedule_line(d) for d in deployments if d.schedules]
    if not config.health.enabled:
        schedules.insert(0, "health-sweep off (health.enabled: false)")
    say.banner(
        config_path=path,
        receiver_url=receiver_url,
        ui_url=api_url.rstrip("/").removesuffix("/api"),
        deployments=[f"{d.flow_name}/{d.name}" for d in deployments],
        schedules=schedules or ["none"],
        incidents="in this process (receiver.incidents: in-process)"
        if in_process
        else "as deployment runs (receiver.incidents: deployment)",
    )


async def _schedule_line(deployment: Any) -> str:
    """``flow/name on cron "…" (next …)`` for a deployment with a cron schedule."""
    from prefect.server.schemas.schedules import CronSchedule

    cron = getattr(deployment.schedules[0].schedule, "cron", None)
    line = f"{deployment.flow_name}/{deployment.name}" + (f' on cron "{cron}"' if cron else "")
    try:
        end = datetime.now(UTC) + timedelta(days=400)  # a yearly cron has a next run too
        dates = await CronSchedule(cron=cron).get_dates(n=1, end=end) if cron else []
    except Exception:  # a schedule Prefect accepted but cannot expand here: say less
        dates = []
    return line + (f" (next {dates[0]:%Y-%m-%d %H:%M:%S} UTC)" if dates else "")


def stopper(
    loop: asyncio.AbstractEventLoop, stop: asyncio.Event, on_stopping: Callable[[], None] | None
) -> Callable[..., None]:
    """A signal handler (and runner SIGTERM hook) that asks serve to stop; the first call
    also tells ``on_stopping``, which must not print (a signal can land mid-print)."""
    asked: list[bool] = []

    def request(*_: object) -> None:
        if not asked:
            asked.append(True)
            if on_stopping is not None:
                on_stopping()
        with contextlib.suppress(RuntimeError):  # the loop already closed: nothing to stop
            loop.call_soon_threadsafe(stop.set)

    return request
