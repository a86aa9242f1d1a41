"""Local child processes for the sandbox: free ports, clean stops, death with the parent.

:class:`LocalProcess` is the runner the sandbox's servers share (Prometheus, Alertmanager,
the sandbox apps): start, wait until ready, stop cleanly, and die with the Python process
that started it, so nothing is left running.
"""

from __future__ import annotations

import atexit
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from pathlib import Path
from typing import NoReturn, Self

from integrations.errors import ConfigError, OncallError

__all__ = [
    "LocalProcess",
    "SandboxFailed",
    "SandboxUnavailable",
    "free_port",
    "local_urlopen",
]


class SandboxUnavailable(ConfigError):
    """A sandbox piece cannot run here because its binary is not installed."""


class SandboxFailed(OncallError):
    """A sandbox process did not start or did not become ready; the message names its log."""


# Re-exec through this so the child gets SIGTERM when its parent dies, even by SIGKILL;
# prctl in a fresh single-threaded interpreter avoids preexec_fn's fork-with-threads hazards.
_DIE_WITH_PARENT = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, 15)\n"  # PR_SET_PDEATHSIG, SIGTERM
    "os.getppid() == int(sys.argv[1]) or os._exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def local_urlopen(
    url: str | urllib.request.Request, timeout: float = 10.0
) -> http.client.HTTPResponse:
    """``urlopen`` that never goes through an ``http_proxy``: sandbox servers are local."""
    return _DIRECT.open(url, timeout=timeout)


_RUNNING: set[LocalProcess] = set()


@atexit.register
def _stop_all() -> None:
    for process in list(_RUNNING):
        process.stop()


class LocalProcess(ABC):
    """One local server process: free port, temp dir with its log, ready probe, clean stop.

    Subclasses say what to run (:meth:`_command`) and which path answers 200 once ready.
    On Linux the child gets SIGTERM when the *thread* that started it ends, so start it
    from a long-lived thread (the main thread, a test fixture), not a short-lived worker.
    The temp dir goes with :meth:`stop` unless ``keep_files`` (or ``ONCALL_SANDBOX_KEEP``)
    is set or the process failed to start.
    """

    name = "process"
    ready_path = "/-/ready"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        ready_timeout: float = 30.0,
        keep_files: bool = False,
    ) -> None:
        self.host = host
        self.port = port or 0
        self.ready_timeout = ready_timeout
        self.keep_files = keep_files or bool(os.environ.get("ONCALL_SANDBOX_KEEP"))
        self.workdir: Path | None = None
        self.log_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        """``host:port``, as a scrape target or an Alertmanager target."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @abstractmethod
    def _command(self, workdir: Path) -> list[str]:
        """Writes what the process needs into ``workdir`` and returns its argv."""

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self) -> Self:
        """Starts the process (no wait); a no-op when it is already running."""
        if self.running:
            return self
        self.port = self.port or free_port(self.host)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"oncall-{self.name}-"))
        self.log_path = self.workdir / f"{self.name}.log"
        argv = self._command(self.workdir)
        if sys.platform == "linux":
            argv = [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *argv]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
            )
        _RUNNING.add(self)
        return self

    def wait_ready(self) -> Self:
        """Blocks until ``ready_path`` answers 200; SandboxFailed (and a stop) otherwise."""
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = self._proc.returncode if self._proc else None
                self._fail(f"{self.name} exited with code {code} before it was ready")
            try:
                with local_urlopen(self.url + self.ready_path, timeout=1) as answer:
                    if answer.status == 200:
                        return self
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        self._fail(f"{self.name} was not ready on {self.url} within {self.ready_timeout:.0f}s")

    def _fail(self, reason: str) -> NoReturn:
        self.keep_files = True
        self.stop()
        raise SandboxFailed(f"{reason}; log {self.log_path}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the process's log, for error messages."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the process (SIGTERM, then SIGKILL) and removes its temp dir unless kept."""
        proc, self._proc = self._proc, None
        _RUNNING.discard(self)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self.workdir is not None and not self.keep_files:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start().wait_ready()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.url} {state}>"
