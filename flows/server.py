"""The local Prefect server that ``oncall`` starts on first use (no Prefect import here).

When ``PREFECT_API_URL`` is unset, oncall uses http://127.0.0.1:4200/api and starts
Prefect's server in the background (``flows.prefect_app``: ``prefect server start`` with busy
503s retried inside the server; SQLite under ``PREFECT_HOME``), so runs
show up in the Prefect UI and an approval can come from another terminal.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from integrations.errors import ConfigError, Unreachable

__all__ = [
    "AUTH_FILE",
    "DEFAULT_API_URL",
    "api_auth_string",
    "api_protected",
    "auth_headers",
    "client_auth_env",
    "is_loopback",
    "SERVER_DEFAULTS",
    "build_seed",
    "ensure",
    "healthy",
    "plain_http_client_env",
    "prefect_home",
    "start",
    "status",
    "stop",
    "wait_healthy",
    "wait_if_starting",
]

DEFAULT_API_URL = "http://127.0.0.1:4200/api"


def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()


AUTH_FILE = "oncall-api-auth"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def api_auth_string(create: bool = False) -> str | None:
    """The basic-auth secret of the local server (``user:password``), made on first start.

    Kept in PREFECT_HOME with mode 0600; every oncall process on this machine reads it.
    """
    import secrets

    path = prefect_home() / AUTH_FILE
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        if not create:
            return None
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another oncall process made it first
        return path.read_text().strip() or None
    secret = f"oncall:{secrets.token_urlsafe(24)}"
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")
    return secret


def is_loopback(api_url: str) -> bool:
    """The API is on this machine only (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    host = urlsplit(api_url).hostname or ""
    if host in _LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def client_auth_env(api_url: str | None = None) -> str | None:
    """Sets PREFECT_API_AUTH_STRING from the local server's secret, unless already set.

    Call it before importing Prefect (its settings are read once). Only for a loopback
    API: the local secret is never sent to another server.
    """
    url = api_url or os.environ.get("PREFECT_API_URL") or DEFAULT_API_URL
    if os.environ.get("PREFECT_API_AUTH_STRING"):
        return os.environ["PREFECT_API_AUTH_STRING"]
    if not is_loopback(url):
        return None
    secret = api_auth_string()
    if secret:
        os.environ["PREFECT_API_AUTH_STRING"] = secret
    return secret


def auth_headers(api_url: str | None = None) -> dict[str, str]:
    """The Authorization header Prefect's basic auth expects, for oncall's own httpx calls."""
    import base64

    secret = client_auth_env(api_url)
    if not secret:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(secret.encode()).decode()}


def api_protected(api_url: str) -> bool | None:
    """True when the API refuses a request without credentials; None when it is not answering."""
    try:
        answer = httpx.get(f"{api_url.rstrip('/')}/admin/version", timeout=2)
    except httpx.HTTPError:
        return None
    return answer.status_code == 401


def _pidfile() -> Path:
    return prefect_home() / "oncall-server.pid"


def logfile() -> Path:
    return prefect_home() / "oncall-server.log"


def healthy(api_url: str, timeout: float = 1.0) -> bool:
    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def _pid() -> int | None:
    try:
        pid = int(_pidfile().read_text().split()[0])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, IndexError):
        return None


def status(api_url: str | None = None) -> dict[str, object]:
    url = api_url or os.environ.get("PREFECT_API_URL") or DEFAULT_API_URL
    info: dict[str, object] = {"api_url": url, "healthy": healthy(url), "pid": _pid()}
    if info["healthy"]:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            info["version"] = httpx.get(
                f"{url.rstrip('/')}/admin/version", timeout=2, headers=auth_headers(url)
            ).json()
        info["ui_url"] = url.rstrip("/").removesuffix("/api")
        info["protected"] = api_protected(url)
    info["home"] = str(prefect_home())
    info["log"] = str(logfile())
    return info


# Server settings oncall starts its local server with; the same variables set in the
# environment win. Measured in benchmarks/ (see benchmarks/README.md).
SERVER_DEFAULTS = {
    # An incident follows its deployed runbooks through the events API: events become
    # readable there when the persister flushes, by default every 5 s. It does nothing
    # while no event waits, so a short interval costs nothing when idle.
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "0.25",
    # Retention. Events already go after 7 days (PREFECT_SERVER_EVENTS_RETENTION_PERIOD);
    # flow runs never do by default, and one-minute health sweeps add ~500,000 a year.
    # The hourly vacuum deletes top-level runs that ended more than 30 days ago, with
    # their task runs, logs and artifacts (incidents' post-mortems too: export those).
    "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events,flow_runs",
    "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD": str(30 * 86400),
}


def _server_env(database_url: str | None, api_url: str | None = None) -> dict[str, str]:
    env = {**SERVER_DEFAULTS, **os.environ}
    env.pop("PREFECT_API_URL", None)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env.setdefault("DO_NOT_TRACK", "1")
    if api_url:  # the UI must call this server's API, not the default port's
        env["PREFECT_UI_API_URL"] = api_url
    env.setdefault("PREFECT_HOME", str(prefect_home()))
    # Basic auth: the API and the UI ask for this secret (the UI shows a login page).
    # A secret this process's clients already use (PREFECT_API_AUTH_STRING) is the server's.
    env.setdefault(
        "PREFECT_SERVER_API_AUTH_STRING",
        env.get("PREFECT_API_AUTH_STRING") or api_auth_string(create=True) or "",
    )
    if database_url:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    return env


# An empty database migrated by the pinned Prefect: a new SQLite database starts as a copy
# of it instead of running Prefect's ~150 migrations (8 of the 13 s of a first start here).
SEEDS = Path(__file__).with_name("data")


def _seed() -> Path | None:
    import importlib.metadata

    try:
        version = importlib.metadata.version("prefect")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = SEEDS / f"prefect-{version}.db.gz"
    return path if path.is_file() else None


def _seed_database(env: dict[str, str]) -> bool:
    """Copies the seed to PREFECT_HOME/prefect.db when the server would create it there."""
    import gzip
    import shutil

    if env.get("PREFECT_SERVER_DATABASE_CONNECTION_URL") or env.get(
        "PREFECT_API_DATABASE_CONNECTION_URL"
    ):
        return False
    db = Path(env["PREFECT_HOME"]).expanduser() / "prefect.db"
    seed = _seed()
    if seed is None or db.exists():
        return False
    partial = db.with_name(f".{db.name}.seeding")
    with gzip.open(seed) as src, open(partial, "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.replace(partial, db)
    return True


def build_seed(out: Path | None = None) -> Path:
    """Makes the seed for the installed Prefect: a server migrates an empty database."""
    import gzip
    import importlib.metadata
    import shutil
    import socket
    import sqlite3
    import tempfile

    out = out or SEEDS / f"prefect-{importlib.metadata.version('prefect')}.db.gz"
    home = Path(tempfile.mkdtemp(prefix="oncall-seed-"))
    saved = os.environ.get("PREFECT_HOME")
    os.environ["PREFECT_HOME"] = str(home)
    try:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        start(f"http://127.0.0.1:{port}/api", wait_s=300)
        stop()
        compact = home / "compact.db"
        with contextlib.closing(sqlite3.connect(home / "prefect.db")) as db:
            db.execute("VACUUM INTO ?", (str(compact),))
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(compact, "rb") as src, gzip.GzipFile(out, "wb", mtime=0) as dst:
            shutil.copyfileobj(src, dst)
        return out
    finally:
        if saved is None:
            os.environ.pop("PREFECT_HOME", None)
        else:
            os.environ["PREFECT_HOME"] = saved
        shutil.rmtree(home, ignore_errors=True)


_spawned: dict[str, subprocess.Popen] = {}  # servers this process started, by API URL


def _starting(api_url: str) -> bool:
    """A server oncall started for this URL is running (it may not answer yet)."""
    proc = _spawned.get(api_url)
    if proc is not None:
        return proc.poll() is None
    try:
        pid, url = _pidfile().read_text().split()[:2]
        os.kill(int(pid), 0)
        # A stale pid file may name a recycled pid: make sure it is a Prefect server.
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists() and b"server" not in cmdline.read_bytes():
            return False
    except (OSError, ValueError):
        return False
    return url == api_url


def _spawn(api_url: str, database_url: str | None) -> None:
    parts = urlsplit(api_url)
    # ``prefect server start``'s foreground server, with busy 503s retried in the server
    # (flows/prefect_app.py): on SQLite they cost a client 2 s each.
    command = [
        sys.executable,
        "-m",
        "flows.prefect_app",
        "--host",
        str(parts.hostname),
        "--port",
        str(parts.port),
    ]
    env = _server_env(database_url, api_url)
    _seed_database(env)
    with open(logfile(), "ab") as log:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    _spawned[api_url] = proc
    _pidfile().write_text(f"{proc.pid} {api_url}\n")


def start(
    api_url: str = DEFAULT_API_URL,
    *,
    database_url: str | None = None,
    wait_s: float = 120.0,
    wait: bool = True,
) -> dict[str, object]:
    """Starts the Prefect server (``flows.prefect_app``) in the background unless one answers.

    With ``wait=False`` it returns as soon as the server process runs, so the caller can
    get on with its own start-up (imports, sandboxes) and call :func:`wait_healthy` before
    it needs the API. A server another oncall process is starting is waited for, not
    started twice.
    """
    parts = urlsplit(api_url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1") or parts.port is None:
        raise ConfigError(f"can only start a local server (127.0.0.1:PORT), not {api_url}")
    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "oncall-server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if healthy(api_url):
            return status(api_url)
        if not _starting(api_url):
            _spawn(api_url, database_url)
    if not wait:
        return {"api_url": api_url, "healthy": False, "pid": _pid()}
    return wait_healthy(api_url, wait_s)


def wait_healthy(api_url: str, wait_s: float = 120.0) -> dict[str, object]:
    """Waits until the server at ``api_url`` answers; Unreachable if it exits or never does."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if healthy(api_url, timeout=0.5):
            return status(api_url)
        if not _starting(api_url):
            tail = logfile().read_text(errors="replace").strip().splitlines()[-1:] or [""]
            raise Unreachable(f"Prefect server exited at start: {tail[0]} (see {logfile()})")
        time.sleep(0.1)
    raise Unreachable(f"Prefect server did not become healthy in {wait_s:.0f}s (see {logfile()})")


def wait_if_starting(wait_s: float = 120.0) -> None:
    """Waits for a server this process started without waiting (``ensure(wait=False)``)."""
    for api_url, proc in list(_spawned.items()):
        if proc.poll() is None and not healthy(api_url, timeout=0.5):
            wait_healthy(api_url, wait_s)


def stop(wait_s: float = 20.0) -> bool:
    """Stops the server this machine's oncall started; False when none was running."""
    pid = _pid()
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it when this process started it
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    _pidfile().unlink(missing_ok=True)
    return True


def plain_http_client_env(api_url: str) -> None:
    """Spares Prefect's clients loading every system CA when the API is plain ``http://``.

    Each Prefect API client builds a CA-verifying SSL context even for an http URL
    (~40 ms; a flow run builds three): with a one-certificate bundle that costs 0.4 ms.
    No TLS is spoken to an http API, so trust is unchanged; if the URL later became
    https with this bundle still set, verification would fail closed, not open.
    """
    if urlsplit(api_url).scheme != "http" or os.environ.get("PREFECT_API_SSL_CERT_FILE"):
        return
    import certifi

    path = prefect_home() / "oncall-plain-http-ca.pem"
    with contextlib.suppress(OSError):
        if not path.exists():
            end = "-----END CERTIFICATE-----"
            first = Path(certifi.where()).read_text().split(end)[0].strip()
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.partial")
            partial.write_text(f"{first}\n{end}\n")
            partial.replace(path)
        os.environ["PREFECT_API_SSL_CERT_FILE"] = str(path)


def ensure(wait: bool = True) -> str:
    """Makes sure a Prefect API answers and ``PREFECT_API_URL`` points at it; returns it.

    ``wait=False`` starts a missing local server without waiting for it: call
    :func:`wait_if_starting` before the first API call (``flows.execute`` does).
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")  # Prefect's client-side telemetry
    url = os.environ.get("PREFECT_API_URL")
    if url:
        if not healthy(url, timeout=3.0):
            raise Unreachable(f"the Prefect API at {url} is not answering (PREFECT_API_URL)")
        plain_http_client_env(url)
        client_auth_env(url)
        return url
    if not healthy(DEFAULT_API_URL):
        start(DEFAULT_API_URL, wait=wait)
    os.environ["PREFECT_API_URL"] = DEFAULT_API_URL
    plain_http_client_env(DEFAULT_API_URL)
    client_auth_env(DEFAULT_API_URL)
    return DEFAULT_API_URL


if __name__ == "__main__":  # uv run python -m flows.server: rebuild the seed after an upgrade
    print(build_seed())
