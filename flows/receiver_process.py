"""The receiver in a process of its own: ``oncall serve`` holds the port, this process answers.

Accepting an alert is a parse, a durable commit and a 202; everything after it (the
dispatcher, the incidents running in ``oncall serve``, Prefect's runner) is Python in the
serve process, under its one GIL. Sharing that GIL, a 202 waited on incidents' work: under
a 200 alerts/s storm, accept p99 was 173–180 ms. In a process of its own the receiver
waits only for a core (benchmarks/README.md, intake).

How the two processes talk:

- **The port.** ``oncall serve`` binds and listens, then hands the socket down: a taken
  port fails in serve itself, and while a receiver process restarts, connections wait in
  the listen backlog instead of being refused.
- **Alerts** go through the intake store both already share (flows/spool.py): committed
  there before the 202, as before. A byte on the *wake* pipe tells the dispatcher to look
  (at most one every WAKE_EVERY_S).
- **The dispatcher's state** (is Prefect reachable, the last error) comes down the *state*
  pipe as JSON lines, for ``/healthz``. The receiver process starts (its imports take a
  second or more) while serve registers its deployments, says ``R`` when loaded and
  answers from the first state line on, which serve sends once it is up: ``/healthz``
  answering still means serve is up. End of file on the pipe means serve is gone: the
  receiver stops. On Linux it is also killed with serve (``PR_SET_PDEATHSIG``), so a
  ``kill -9`` of serve frees the port at once.

The receiver ignores SIGINT (Ctrl-C reaches the whole process group; serve decides) and
stops on SIGTERM, which serve sends on its way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from flows.receiver import Dispatcher, create_app, health_report
from flows.spool import Spool
from integrations.errors import ConfigError, OncallError

__all__ = ["ReceiverProcess", "listen"]

log = logging.getLogger("oncall.receiver")

READY = b"R"
WAKE_EVERY_S = 0.02  # wakes of the dispatcher are coalesced over this long
STATE_EVERY_S = 0.5  # how often serve looks whether the dispatcher's state changed
STATE_RESEND_S = 10.0  # and says it again anyway (a restarted receiver hears it)
STOP_S = 3.0  # SIGTERM, then SIGKILL: serve must be gone within 5 s of a stop
RESTARTS = 3  # receiver processes that may die within RESTART_WINDOW_S before serve gives up
RESTART_WINDOW_S = 60.0


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the owner decides when it stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, inheritable; a clear error when it cannot be.
    The address family as uvicorn chooses it: IPv6 for a host with a colon, else IPv4
    (``localhost`` is 127.0.0.1 whatever /etc/hosts lists first)."""
    sock = None
    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        if sock is not None:
            sock.close()
        why = (exc.strerror or str(exc)).lower()
        raise ConfigError(f"receiver: cannot listen on {host}:{port}: {why}") from None
    sock.set_inheritable(True)
    return sock


class ReceiverProcess:
    """Runs the receiver (flows/receiver.py) in a child process on ``sock``, restarts it
    if it dies, wakes ``dispatcher`` when it stores alerts and tells it the dispatcher's
    state."""

    def __init__(
        self, sock: socket.socket, config_path: str, api_url: str, dispatcher: Dispatcher
    ) -> None:
        self.sock = sock
        self.config_path = config_path
        self.api_url = api_url
        self.dispatcher = dispatcher
        self.loaded = asyncio.Event()  # the first receiver process is ready to answer
        self.answering = False  # serve is up: receiver processes may answer
        self.stopping = False
        self._proc: asyncio.subprocess.Process | None = None
        self._state_w = -1
        self._sent: tuple[bool, str] | None = None
        self._sent_at = 0.0

    async def run(self) -> None:
        """Until :meth:`stop`: a receiver process, then another if one dies unasked."""
        deaths: list[float] = []
        publisher = asyncio.create_task(self._publish_state(), name="receiver state")
        try:
            while not self.stopping:
                code = await self._one()
                if self.stopping:
                    return
                now = time.monotonic()
                deaths = [t for t in deaths if now - t < RESTART_WINDOW_S] + [now]
                if len(deaths) > RESTARTS:
                    raise OncallError(
                        f"the receiver process exited {len(deaths)} times within"
                        f" {RESTART_WINDOW_S:.0f}s (last exit code {code}): stopping"
                    )
                log.warning("the receiver process exited (code %s): starting a new one", code)
        finally:
            publisher.cancel()
            self.sock.close()

    async def _one(self) -> int:
        loop = asyncio.get_running_loop()
        wake_r, wake_w = os.pipe()
        state_r, state_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(state_w, False)  # a stuck receiver must never block serve's loop
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "flows.receiver_process",
                self.config_path,
                self.api_url,
                str(self.sock.fileno()),
                str(wake_w),
                str(state_r),
                str(os.getpid()),
                pass_fds=(self.sock.fileno(), wake_w, state_r),
            )
        finally:
            os.close(wake_w)
            os.close(state_r)
        self._state_w, self._sent = state_w, None
        loop.add_reader(wake_r, self._woken, wake_r)
        try:
            return await self._proc.wait()
        finally:
            loop.remove_reader(wake_r)
            os.close(wake_r)
            os.close(state_w)
            self._state_w = -1

    def _woken(self, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not data:  # the receiver closed its end: it is exiting
            asyncio.get_running_loop().remove_reader(fd)
            return
        if READY in data:
            self.loaded.set()
        self.dispatcher.wake.set()

    async def _publish_state(self) -> None:
        while True:
            self._send_state()
            await asyncio.sleep(STATE_EVERY_S)

    def _send_state(self) -> None:
        """The dispatcher's state down the state pipe, when it changed (or now and then)."""
        state = (self.dispatcher.prefect_ok, self.dispatcher.last_error)
        now = time.monotonic()
        due = state != self._sent or now - self._sent_at > STATE_RESEND_S
        if self.answering and self._state_w >= 0 and due:
            line = json.dumps({"prefect_ok": state[0], "last_error": state[1]}) + "\n"
            with contextlib.suppress(BlockingIOError, BrokenPipeError):
                os.write(self._state_w, line.encode())
                self._sent, self._sent_at = state, now

    def answer(self) -> None:
        """Serve is up: the receiver answers from now on (its first state line)."""
        self.answering = True
        self._send_state()

    async def stop(self) -> None:
        """SIGTERM (it finishes the requests it holds), SIGKILL after STOP_S."""
        self.stopping = True
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


class _Relay:
    """The dispatcher as the receiver process sees it: woken through a pipe, its state
    mirrored from serve (what create_app needs of a Dispatcher)."""

    def __init__(self, spool: Spool, api_url: str, wake_fd: int) -> None:
        self.spool = spool
        self.api_url = api_url
        self.wake = self  # create_app calls dispatcher.wake.set()
        self.prefect_ok = True
        self.last_error = ""
        self._wake_fd = wake_fd
        self._pending = b""
        self._waking = False
        self.told = asyncio.Event()  # the first state line came (or the pipe ended)

    def set(self) -> None:
        """Wakes the dispatcher WAKE_EVERY_S from now, once for every alert stored
        meanwhile: a byte per alert cost the receiver a fifth of its time under a storm
        (each write woke serve, which took the core)."""
        if not self._waking:
            self._waking = True
            asyncio.get_running_loop().call_later(WAKE_EVERY_S, self._wake)

    def _wake(self) -> None:
        self._waking = False
        with contextlib.suppress(BlockingIOError):  # a full pipe: serve is woken already
            os.write(self._wake_fd, b"w")

    def ready(self) -> None:
        os.set_blocking(self._wake_fd, True)
        os.write(self._wake_fd, READY)
        os.set_blocking(self._wake_fd, False)

    def read_state(self, fd: int, on_eof: Callable[[], None]) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not data:
            asyncio.get_running_loop().remove_reader(fd)
            on_eof()
            self.told.set()
            return
        *lines, self._pending = (self._pending + data).split(b"\n")
        for line in lines[-1:]:
            with contextlib.suppress(ValueError):
                state = json.loads(line)
                self.prefect_ok = bool(state["prefect_ok"])
                self.last_error = str(state["last_error"])
                self.told.set()

    def health(self) -> dict[str, Any]:
        return health_report(self.spool.stats(), self.prefect_ok, self.last_error)


def _die_with(parent: int) -> None:
    """Killed when serve dies, even by SIGKILL (Linux); elsewhere the state pipe's end of
    file stops it."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # serve died before the line above
        sys.exit(1)


def main(argv: list[str]) -> int:
    """``python -m flows.receiver_process CONFIG API_URL LISTEN_FD WAKE_FD STATE_FD PARENT``"""
    config_path, api_url, listen_fd, wake_fd, state_fd, parent = argv
    _die_with(int(parent))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from flows.config_load import load_config
    from flows.spool import store_url

    config = load_config(config_path)
    spool = Spool(store_url(config), dedup_window_s=config.receiver.dedup_window)
    os.set_blocking(int(wake_fd), False)
    os.set_blocking(int(state_fd), False)
    relay = _Relay(spool, api_url, int(wake_fd))
    app = create_app(config, spool, relay)
    server = QuietServer(
        uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2)
    )

    def stop() -> None:
        server.should_exit = True

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop)
        loop.add_reader(int(state_fd), relay.read_state, int(state_fd), stop)
        sock = socket.socket(fileno=int(listen_fd))
        relay.ready()
        await relay.told.wait()  # serve is up (or gone)
        if not server.should_exit:
            await server.serve(sockets=[sock])

    asyncio.run(serve())
    spool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
