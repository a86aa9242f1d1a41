"""Small local apps exposing prometheus_client metrics, for tests and game-day drills.

    python -m flows.drills.sandbox.apps leaky --port 9101 --leak-mb-per-s 2 --limit-mb 256
    python -m flows.drills.sandbox.apps faulty --port 9102 --error-rate 0.2 --latency 0.3 --rps 20

``leaky`` really leaks memory (touched anonymous pages, so RSS grows); ``faulty`` serves
``/api/sessions``, ``/api/users`` and ``/api/rooms`` with a configurable error rate and
latency and drives itself with a built-in load generator. Both answer ``GET /metrics``,
``GET /health``, ``GET /control`` (state) and ``POST /control`` (JSON; see each app's
``control``), and carry ``app_build_info{version}`` and ``app_deploy_timestamp_seconds`` so a
runbook can correlate a change with a deploy. From Python, :class:`SandboxApp` runs one as a
subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from flows.drills.sandbox.app_logic import (
    ENDPOINTS,
    LATENCY_BUCKETS,
    PAGE,
    App,
    FaultyApp,
    LeakyApp,
)
from flows.drills.sandbox.process import LocalProcess, local_urlopen
from integrations.errors import ConfigError

__all__ = ["ENDPOINTS", "LATENCY_BUCKETS", "FaultyApp", "LeakyApp", "SandboxApp", "main"]

# The apps themselves (LeakyApp, FaultyApp) live in flows.drills.sandbox.app_logic; this module
# serves one over HTTP in its own process and runs it from Python as a child process.


def _handler(app: App) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per request would drown the log the tests keep for debugging

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            self._send(status, json.dumps(payload).encode(), "application/json")

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(app.registry), CONTENT_TYPE_LATEST)
            elif path == "/health":
                self._json(200, {"status": "ok", "version": app.deploys.version})
            elif path == "/control":
                self._json(200, app.state())
            elif isinstance(app, FaultyApp) and (answer := app.serve("GET", path)):
                self._json(*answer)
            else:
                self._json(404, {"error": f"no route {path}"})

        def do_POST(self) -> None:
            if self.path.split("?", 1)[0] != "/control":
                self._json(404, {"error": f"no route {self.path}"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            try:
                payload = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(payload, dict):
                    raise ValueError("expected a JSON object")
                self._json(200, app.control(payload))
            except (ValueError, TypeError) as exc:
                self._json(400, {"error": str(exc)})

    return Handler


class SandboxApp(LocalProcess):
    """Runs ``leaky`` or ``faulty`` as a child process until the ``with`` block ends.

    Keyword options become the app's flags (``leak_mb_per_s=5`` is ``--leak-mb-per-s 5``,
    ``paused=True`` is ``--paused``); ready once ``/metrics`` answers.
    """

    ready_path = "/metrics"

    def __init__(
        self,
        kind: Literal["leaky", "faulty"],
        *,
        version: str = "v1",
        host: str = "127.0.0.1",
        port: int | None = None,
        ready_timeout: float = 15.0,
        keep_files: bool = False,
        **flags: Any,
    ) -> None:
        super().__init__(host=host, port=port, ready_timeout=ready_timeout, keep_files=keep_files)
        if kind not in ("leaky", "faulty"):
            raise ConfigError(f"unknown sandbox app {kind!r}; use 'leaky' or 'faulty'")
        self.kind = self.name = kind
        self.flags = {"version": version, **flags}

    @property
    def metrics_url(self) -> str:
        return f"{self.url}/metrics"

    def _command(self, workdir: Path) -> list[str]:
        argv = [sys.executable, "-m", "flows.drills.sandbox.apps", self.kind]
        argv += ["--host", self.host, "--port", str(self.port)]
        for key, value in self.flags.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif isinstance(value, dict):
                argv += [flag, json.dumps(value)]
            elif value is not None and value is not False:
                argv += [flag, str(value)]
        return argv

    def _env(self) -> dict[str, str]:
        env = super()._env()
        root = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        return env

    def control(self, **payload: Any) -> dict[str, Any]:
        """Sends ``POST /control`` and returns the app's new state."""
        request = urllib.request.Request(
            f"{self.url}/control",
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with local_urlopen(request, timeout=10) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            raise ConfigError(f"{self.kind} refused {payload}: {exc.read().decode()}") from exc

    def state(self) -> dict[str, Any]:
        """The app's current settings and held memory (``GET /control``)."""
        with local_urlopen(f"{self.url}/control", timeout=10) as answer:
            return json.loads(answer.read())

    def rss_bytes(self) -> int:
        """The child's resident memory now, read from /proc (Linux)."""
        statm = Path(f"/proc/{self.pid}/statm").read_text().split()
        return int(statm[1]) * PAGE


def main(argv: list[str] | None = None) -> None:
    """Runs one sandbox app until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.drills.sandbox.apps", description=__doc__
    )
    sub = parser.add_subparsers(dest="kind", required=True)
    leaky = sub.add_parser("leaky", help="leaks memory at a steady rate")
    leaky.add_argument("--leak-mb-per-s", type=float, default=2.0)
    leaky.add_argument("--limit-mb", type=float, default=256.0, help="simulated OOM limit")
    leaky.add_argument("--paused", action="store_true", help="start without leaking")
    faulty = sub.add_parser("faulty", help="serves API endpoints with errors and latency")
    faulty.add_argument("--error-rate", type=float, default=0.0, help="0..1, every endpoint")
    faulty.add_argument("--latency", type=float, default=0.05, help="seconds, every endpoint")
    faulty.add_argument("--rps", type=float, default=20.0, help="built-in load; 0 for none")
    faulty.add_argument("--endpoints", type=json.loads, default={}, help='{"/api/users": {..}}')
    for p in (leaky, faulty):
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=0, help="0 picks a free port")
        p.add_argument("--version", default="v1", dest="app_version")
    args = parser.parse_args(argv)

    app: App
    if args.kind == "leaky":
        app = LeakyApp(
            leak_mb_per_s=args.leak_mb_per_s,
            limit_mb=args.limit_mb,
            version=args.app_version,
            leaking=not args.paused,
        )
    else:
        app = FaultyApp(
            error_rate=args.error_rate,
            latency_s=args.latency,
            rps=args.rps,
            version=args.app_version,
        )
        app.control({"endpoints": args.endpoints})
    server = ThreadingHTTPServer((args.host, args.port), _handler(app))
    server.daemon_threads = True
    port = server.server_address[1]
    if isinstance(app, FaultyApp):
        app.start_load(port)
    print(f"{args.kind} listening on http://{args.host}:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
