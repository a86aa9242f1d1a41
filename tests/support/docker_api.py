"""A small local Docker Engine API on a unix socket that the real ``docker`` SDK talks to.

Used by the tests and by drills. It serves ``/_ping``, ``/version``, ``/info``, containers
(list with filters, inspect, stats, logs, create, start, stop, restart, kill, rename, remove)
and images (list, inspect, history), with or without a ``/v1.xx`` prefix. Shapes follow the
Docker Engine API reference, v1.47 (https://docs.docker.com/reference/api/engine/version/v1.47/).
Containers and images live in memory; helpers seed a compose service with an image history.
Every request is recorded for tests to assert on.

The containers and images are in :mod:`tests.support.docker_engine`, the object shapes in
:mod:`tests.support.docker_objects`.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shutil
import socketserver
import struct
import tempfile
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel

from tests.support.docker_engine import DockerEngine
from tests.support.docker_objects import (
    API_VERSION,
    ApiFailure,
    container_stats,
    container_summary,
    label_matches,
    parse_iso,
    truthy,
)

__all__ = ["DockerApiServer", "RecordedRequest"]


class RecordedRequest(BaseModel):
    """One request the server received (path without its /v1.xx prefix)."""

    method: str
    path: str
    query: dict[str, str]
    body: Any = None
    version: str | None = None


class DockerApiServer(DockerEngine):
    """An in-memory Docker Engine on a unix socket in a temp dir; use as a context manager.

    ``base_url`` is what ``docker.DockerClient(base_url=...)`` takes. ``deny(method, path)``
    makes an authorization plugin refuse matching requests (403); ``crashing_images`` lists
    images whose containers restart-loop; ``fail_next`` makes the next matching request fail.
    """

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[RecordedRequest] = []
        self.socket_path = ""
        self.base_url = ""
        self._denied: list[tuple[str, str]] = []
        self._failures: list[list[Any]] = []
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._dir = ""

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> DockerApiServer:
        """Starts serving on ``<tempdir>/docker.sock`` in a daemon thread."""
        self._dir = tempfile.mkdtemp(prefix="oncall-docker-")
        self.socket_path = os.path.join(self._dir, "docker.sock")
        self.base_url = f"unix://{self.socket_path}"
        self._server = socketserver.ThreadingUnixStreamServer(self.socket_path, _Handler)
        self._server.daemon_threads = True
        self._server.api = self  # type: ignore[attr-defined]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Stops serving and removes the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> DockerApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def writes(self) -> list[RecordedRequest]:
        """The recorded requests that could change state (anything but GET and HEAD)."""
        return [r for r in self.requests if r.method not in ("GET", "HEAD")]

    def deny(self, method: str, path_part: str) -> None:
        """Makes an authorization plugin refuse requests whose path contains ``path_part``."""
        self._denied.append((method.upper(), path_part))

    def fail_next(self, method: str, path_part: str, code: int = 500, times: int = 1) -> None:
        """Makes the next ``times`` requests whose path contains ``path_part`` answer ``code``."""
        self._failures.append([method.upper(), path_part, code, times])

    # -- request handling ------------------------------------------------------------------
    def handle(self, method: str, raw_path: str, raw: bytes) -> tuple[int, Any, dict[str, str]]:
        """Answers one request: (status, JSON-able body or text or bytes, extra headers)."""
        parts = urlsplit(raw_path)
        prefix = re.match(r"^/v(\d+\.\d+)(?=/)", parts.path)
        path = parts.path[prefix.end() :] if prefix else parts.path
        query = dict(parse_qsl(parts.query))
        body = json.loads(raw) if raw else None
        with self._lock:
            self.requests.append(
                RecordedRequest(
                    method=method, path=path, query=query, body=body, version=prefix and prefix[1]
                )
            )
            try:
                for deny_method, part in self._denied:
                    if deny_method == method and part in path:
                        raise ApiFailure(
                            403,
                            f"authorization denied by plugin opa-docker-authz: {method} {path} "
                            "is not allowed for this client",
                        )
                for failure in self._failures:
                    if failure[3] > 0 and failure[0] == method and failure[1] in path:
                        failure[3] -= 1
                        raise ApiFailure(failure[2], "injected failure")
                return self._route(method, path, query, body)
            except ApiFailure as fail:
                return fail.code, {"message": fail.message}, {}

    def _route(
        self, method: str, path: str, query: dict[str, str], body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        ping_headers = {
            "Api-Version": API_VERSION,
            "Docker-Experimental": "false",
            "Ostype": "linux",
            "Builder-Version": "2",
            "Cache-Control": "no-cache, no-store, must-revalidate",
        }
        if path == "/_ping":
            return 200, "OK", ping_headers
        if path == "/version":
            return (
                200,
                {
                    "Platform": {"Name": "Docker Engine - Community"},
                    "Version": "27.3.1",
                    "ApiVersion": API_VERSION,
                    "MinAPIVersion": "1.24",
                    "GitCommit": "41ca978",
                    "GoVersion": "go1.22.7",
                    "Os": "linux",
                    "Arch": "amd64",
                    "KernelVersion": "6.8.0-45-generic",
                    "BuildTime": "2024-09-20T11:41:11.000000000+00:00",
                    "Components": [
                        {
                            "Name": "Engine",
                            "Version": "27.3.1",
                            "Details": {"ApiVersion": API_VERSION, "MinAPIVersion": "1.24"},
                        }
                    ],
                },
                {},
            )
        if path == "/info":
            running = sum(c["State"]["Running"] for c in self._containers.values())
            return (
                200,
                {
                    "ID": "7TRN:IPZB:QYBB:VPBQ:UWS2:YSHM:F5M3:SSLH:6VWD:ZZLJ:6IZJ:Z6IS",
                    "Containers": len(self._containers),
                    "ContainersRunning": running,
                    "ContainersPaused": 0,
                    "ContainersStopped": len(self._containers) - running,
                    "Images": len(self._images),
                    "Driver": "overlay2",
                    "MemTotal": 24 * 2**30,
                    "NCPU": 2,
                    "OperatingSystem": "Ubuntu 24.04.1 LTS",
                    "OSType": "linux",
                    "Architecture": "x86_64",
                    "ServerVersion": "27.3.1",
                    "Name": "sandbox",
                    "CgroupVersion": "2",
                    "CgroupDriver": "systemd",
                    "KernelVersion": "6.8.0-45-generic",
                },
                {},
            )
        if path == "/containers/json":
            return 200, self._list_containers(query), {}
        if path == "/containers/create" and method == "POST":
            return 201, {"Id": self._create(query.get("name"), body or {}), "Warnings": []}, {}
        if path == "/images/json":
            return 200, self._list_images(query), {}
        if m := re.fullmatch(r"/images/(.+)/(json|history)", path):
            image = self._find_image(m[1])
            if image is None:
                raise ApiFailure(404, f"No such image: {m[1]}")
            return 200, copy.deepcopy(image if m[2] == "json" else self._history[image["Id"]]), {}
        if m := re.fullmatch(r"/containers/([^/]+)(?:/(\w+))?", path):
            return self._container_action(method, self._get_container(m[1]), m[2] or "", query)
        raise ApiFailure(404, "page not found")

    def _container_action(
        self, method: str, c: dict[str, Any], action: str, query: dict[str, str]
    ) -> tuple[int, Any, dict[str, str]]:
        running = c["State"]["Running"]
        short = c["Name"].lstrip("/")
        if method == "GET" and action == "json":
            return 200, copy.deepcopy(c), {}
        if method == "GET" and action == "stats":
            return 200, container_stats(c, *self._usage[c["Id"]]), {}
        if method == "GET" and action == "logs":
            tail = query.get("tail", "all")
            lines = [
                (s, t)
                for s, t in self._logs.get(c["Id"], [])
                if truthy(query.get({1: "stdout", 2: "stderr"}[s]))
            ]
            lines = lines if tail == "all" else lines[len(lines) - int(tail) :] if int(tail) else []
            # Non-TTY logs are multiplexed: each frame has an 8-byte header (stream, 0, 0, 0, size).
            frames = b"".join(
                struct.pack(">BxxxL", s, len(t.encode()) + 1) + t.encode() + b"\n" for s, t in lines
            )
            return 200, frames, {"Content-Type": "application/vnd.docker.multiplexed-stream"}
        if method == "POST" and action in ("start", "stop") and running == (action == "start"):
            return 304, b"", {}
        if method == "POST" and action == "start":
            self._start(c)
        elif method == "POST" and action == "stop":
            self._stop(c, 0)
        elif method == "POST" and action == "restart":
            self._stop(c, 0)
            self._start(c)
        elif method == "POST" and action == "kill":
            if not running:
                raise ApiFailure(
                    409, f"Cannot kill container: {short}: container {c['Id']} is not running"
                )
            self._stop(c, 137)
        elif method == "POST" and action == "rename":
            new = query.get("name", "")
            if (taken := self._find_container(new)) is not None and taken is not c:
                raise ApiFailure(
                    409,
                    f'Conflict. The container name "/{new}" is already in use by container '
                    f'"{taken["Id"]}". '
                    "You have to remove (or rename) that container to be able to reuse that name.",
                )
            c["Name"] = f"/{new}"
        elif method == "DELETE" and not action:
            if running and not truthy(query.get("force")):
                raise ApiFailure(
                    409,
                    f'cannot remove container "{c["Name"]}": container is running: stop the '
                    "container before removing or force remove",
                )
            del self._containers[c["Id"]]
        else:
            raise ApiFailure(404, "page not found")
        return 204, b"", {}

    def _list_containers(self, query: dict[str, str]) -> list[dict[str, Any]]:
        filters = json.loads(query.get("filters") or "{}")
        # Filters come as {"label": ["k=v"]} or, from older clients, {"label": {"k=v": true}}.
        filters = {k: list(v) for k, v in filters.items()}
        out = []
        for c in reversed(self._containers.values()):  # newest first, as the daemon lists them
            labels, state = c["Config"]["Labels"], c["State"]["Status"]
            if not truthy(query.get("all")) and state != "running" and "status" not in filters:
                continue
            if not all(label_matches(f, labels) for f in filters.get("label", [])):
                continue
            if filters.get("status") and state not in filters["status"]:
                continue
            if filters.get("name") and not any(re.search(n, c["Name"]) for n in filters["name"]):
                continue
            if filters.get("id") and not any(c["Id"].startswith(i) for i in filters["id"]):
                continue
            out.append(container_summary(c))
        return out

    def _list_images(self, query: dict[str, str]) -> list[dict[str, Any]]:
        refs = json.loads(query.get("filters") or "{}").get("reference", [])
        out = []
        for img in sorted(self._images.values(), key=lambda i: i["Created"], reverse=True):
            tags = img["RepoTags"]
            if refs and not any(
                fnmatch.fnmatch(t, r if ":" in r.split("/")[-1] else f"{r}:*")
                for t in tags
                for r in refs
            ):
                continue
            # Shape: ImageSummary (GET /images/json).
            out.append(
                {
                    "Id": img["Id"],
                    "ParentId": "",
                    "RepoTags": tags,
                    "RepoDigests": img["RepoDigests"],
                    "Created": int(parse_iso(img["Created"]).timestamp()),
                    "Size": img["Size"],
                    "SharedSize": -1,
                    "Labels": img["Config"]["Labels"],
                    "Containers": sum(c["Image"] == img["Id"] for c in self._containers.values()),
                }
            )
        return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        code, payload, headers = self.server.api.handle(self.command, self.path, raw)  # type: ignore[attr-defined]
        if isinstance(payload, bytes):
            data = payload
        elif isinstance(payload, str):
            data, headers = (
                payload.encode(),
                {"Content-Type": "text/plain; charset=utf-8", **headers},
            )
        else:
            data, headers = (
                json.dumps(payload).encode(),
                {"Content-Type": "application/json", **headers},
            )
        self.send_response(code)
        for key, value in {
            "Api-Version": API_VERSION,
            "Server": "Docker/27.3.1 (linux)",
            **headers,
        }.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD" and code != 304:
            self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_HEAD = _serve

    def address_string(self) -> str:
        return "docker.sock"  # unix sockets have no client address

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base class signature
        """Keeps request lines out of stderr; requests are recorded instead."""
