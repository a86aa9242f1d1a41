"""The sandbox Docker Engine's containers and images, held in memory, and how they change.

Helpers seed images with a build history and a compose service's containers;
:class:`tests.support.docker_api.DockerApiServer` serves the engine over the Engine API.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import re
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.support.docker_objects import (
    CONFIG_DEFAULTS,
    HOST_DEFAULTS,
    INSPECT_STATIC,
    NAMES,
    NEVER,
    SURNAMES,
    ApiFailure,
    iso,
)

__all__ = ["DockerEngine"]


class DockerEngine:
    """Containers and images in memory; ``crashing_images`` lists images that restart-loop."""

    def __init__(self) -> None:
        self.crashing_images: set[str] = set()
        self._containers: dict[str, dict[str, Any]] = {}
        self._images: dict[str, dict[str, Any]] = {}
        self._history: dict[str, list[dict[str, Any]]] = {}
        self._usage: dict[str, tuple[int, float]] = {}
        self._logs: dict[str, list[tuple[int, str]]] = {}
        self._random = random.Random(11)  # deterministic ids and names across runs
        self._lock = threading.RLock()

    # -- inspection and seeding ------------------------------------------------------------
    def container(self, ref: str) -> dict[str, Any]:
        """A copy of one container's inspect JSON, by name or id (KeyError if absent)."""
        with self._lock:
            found = self._find_container(ref)
            if found is None:
                raise KeyError(ref)
            return copy.deepcopy(found)

    def containers(self) -> list[dict[str, Any]]:
        """Copies of every container's inspect JSON, oldest first."""
        with self._lock:
            return copy.deepcopy(list(self._containers.values()))

    def add_image(
        self,
        ref: str,
        *,
        created: datetime | None = None,
        env: list[str] | None = None,
        cmd: list[str] | None = None,
    ) -> str:
        """Stores an image tagged ``ref``; returns its id."""
        created = created or datetime.now(UTC) - timedelta(days=1)
        image_id = "sha256:" + hashlib.sha256(ref.encode()).hexdigest()
        repo, _, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "latest")
        size = 80_000_000 + self._random.randrange(20_000_000)
        # Shape: ImageInspect (GET /images/{name}/json).
        self._images[image_id] = {
            "Id": image_id,
            "RepoTags": [f"{repo}:{tag}"],
            "Parent": "",
            "Comment": "",
            "RepoDigests": [f"{repo}@sha256:{hashlib.sha256(image_id.encode()).hexdigest()}"],
            "Created": iso(created),
            "DockerVersion": "",
            "Author": "",
            "Architecture": "amd64",
            "Os": "linux",
            "Size": size,
            "Metadata": {"LastTagTime": iso(created)},
            "Config": {
                **CONFIG_DEFAULTS,
                "Env": env or ["PATH=/usr/local/bin:/usr/bin:/bin", f"APP_VERSION={tag}"],
                "Cmd": cmd or ["python", "-m", "app"],
                "WorkingDir": "/app",
                "ExposedPorts": {"8080/tcp": {}},
                "Labels": {"org.opencontainers.image.version": tag},
            },
            "RootFS": {
                "Type": "layers",
                "Layers": [
                    f"sha256:{hashlib.sha256(f'{ref}{i}'.encode()).hexdigest()}" for i in range(3)
                ],
            },
        }
        # Shape: HistoryResponseItem list (GET /images/{name}/history), newest layer first.
        stamp = int(created.timestamp())
        self._history[image_id] = [
            {
                "Id": image_id,
                "Created": stamp,
                "CreatedBy": f"CMD {json.dumps(cmd or ['python', '-m', 'app'])}",
                "Tags": [f"{repo}:{tag}"],
                "Size": 0,
                "Comment": "buildkit.dockerfile.v0",
            },
            {
                "Id": "<missing>",
                "Created": stamp,
                "CreatedBy": "COPY . /app # buildkit",
                "Tags": None,
                "Size": size - 74_000_000,
                "Comment": "buildkit.dockerfile.v0",
            },
            {
                "Id": "<missing>",
                "Created": stamp - 86400 * 30,
                "CreatedBy": "/bin/sh -c #(nop) ADD file:5f2d in / ",
                "Tags": None,
                "Size": 74_000_000,
                "Comment": "",
            },
        ]
        return image_id

    def add_container(
        self,
        name: str,
        image: str,
        *,
        labels: dict[str, str] | None = None,
        env: list[str] | None = None,
        memory_limit: int = 0,
        running: bool = True,
        health: str | None = None,
        network: str = "bridge",
        aliases: list[str] | None = None,
        host_ports: dict[str, int] | None = None,
    ) -> str:
        """Creates (and by default starts) a container of a stored image; returns its id.

        ``host_ports`` publishes container ports on fixed host ports, e.g. {"8080/tcp": 80}.
        """
        body: dict[str, Any] = {
            "Image": image,
            "Labels": labels or {},
            "Env": env or [],
            "HostConfig": {
                "Memory": memory_limit,
                "NetworkMode": network,
                "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0},
                "PortBindings": {
                    port: [{"HostIp": "", "HostPort": str(host)}]
                    for port, host in (host_ports or {}).items()
                },
            },
            "NetworkingConfig": {"EndpointsConfig": {network: {"Aliases": aliases or []}}},
        }
        if health:
            body["Healthcheck"] = {
                "Test": ["CMD", "curl", "-fs", "http://localhost:8080/health"],
                "Interval": 30_000_000_000,
                "Retries": 3,
            }
        with self._lock:
            cid = self._create(name, body)
            if running:
                self._start(self._containers[cid])
                if health and "Health" in self._containers[cid]["State"]:
                    self._containers[cid]["State"]["Health"]["Status"] = health
        return cid

    def seed_compose_service(
        self,
        project: str,
        service: str,
        images: list[str],
        *,
        replicas: int = 2,
        env: dict[str, str] | None = None,
        memory_limit: int = 256 * 2**20,
        health: str | None = "healthy",
    ) -> list[str]:
        """Stores ``images`` (oldest first, a deploy every two days) and runs the last one as
        ``replicas`` containers of a compose service, as ``docker compose up`` names them."""
        now = datetime.now(UTC)
        for i, ref in enumerate(images):
            self.add_image(ref, created=now - timedelta(days=2 * (len(images) - 1 - i), hours=1))
        names = []
        for n in range(1, replicas + 1):
            name = f"{project}-{service}-{n}"
            labels = {
                "com.docker.compose.project": project,
                "com.docker.compose.service": service,
                "com.docker.compose.container-number": str(n),
                "com.docker.compose.oneoff": "False",
                "com.docker.compose.version": "2.29.1",
                "com.docker.compose.project.working_dir": f"/srv/{project}",
                "com.docker.compose.config-hash": hashlib.sha256(
                    f"{service}{images[-1]}".encode()
                ).hexdigest(),
            }
            self.add_container(
                name,
                images[-1],
                labels=labels,
                memory_limit=memory_limit,
                health=health,
                env=[f"{k}={v}" for k, v in (env or {}).items()],
                network=f"{project}_default",
                aliases=[name, service],
            )
            names.append(name)
        return names

    def oom_kill(self, ref: str, *, restarts: int = 3, exited: bool = False) -> None:
        """Records OOM kills: ``restarts`` policy restarts, or (``exited``) left exited with 137."""
        with self._lock:
            state = self._find_container(ref)["State"]
            self._find_container(ref)["RestartCount"] += restarts
            now = datetime.now(UTC)
            state["FinishedAt"] = iso(now - timedelta(seconds=40))
            if exited:
                state.update(
                    Status="exited",
                    Running=False,
                    Pid=0,
                    OOMKilled=True,
                    ExitCode=137,
                    FinishedAt=iso(now),
                )
            else:
                state.update(StartedAt=iso(now - timedelta(seconds=30)), ExitCode=0)

    def set_usage(self, ref: str, *, memory: int, cpu_percent: float = 5.0) -> None:
        """Sets what the stats endpoint reports for a container (memory in bytes)."""
        with self._lock:
            self._usage[self._find_container(ref)["Id"]] = (memory, cpu_percent)

    def set_logs(self, ref: str, stdout: list[str], stderr: list[str] | None = None) -> None:
        """Sets a container's log lines (stdout first, then stderr)."""
        with self._lock:
            cid = self._find_container(ref)["Id"]
            self._logs[cid] = [(1, line) for line in stdout] + [(2, line) for line in stderr or []]

    # -- containers ------------------------------------------------------------------------
    def _find_container(self, ref: str) -> dict[str, Any] | None:
        for c in self._containers.values():
            if c["Name"] == f"/{ref.lstrip('/')}" or c["Id"] == ref:
                return c
        matches = [
            c for c in self._containers.values() if len(ref) >= 4 and c["Id"].startswith(ref)
        ]
        return matches[0] if len(matches) == 1 else None

    def _get_container(self, ref: str) -> dict[str, Any]:
        found = self._find_container(ref)
        if found is None:
            raise ApiFailure(404, f"No such container: {ref}")
        return found

    def _find_image(self, ref: str) -> dict[str, Any] | None:
        if ref in self._images:
            return self._images[ref]
        full = ref if ":" in ref.split("/")[-1] else f"{ref}:latest"
        for img in self._images.values():
            if full in img["RepoTags"] or img["Id"].removeprefix("sha256:").startswith(
                ref.removeprefix("sha256:")
            ):
                return img
        return None

    def _create(self, name: str | None, body: dict[str, Any]) -> str:
        image = self._find_image(body.get("Image") or "")
        if image is None:
            raise ApiFailure(404, f"No such image: {body.get('Image')}")
        name = name or f"{self._random.choice(NAMES)}_{self._random.choice(SURNAMES)}"
        if not re.fullmatch(r"/?[a-zA-Z0-9][a-zA-Z0-9_.-]+", name):
            raise ApiFailure(
                400, f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )
        if (taken := self._find_container(name)) is not None and taken["Name"] == f"/{name}":
            raise ApiFailure(
                409,
                f'Conflict. The container name "/{name}" is already in use by container '
                f'"{taken["Id"]}". You have to remove (or rename) that container to be able to '
                "reuse that name.",
            )
        cid = f"{self._random.getrandbits(256):064x}"
        own = {k: v for k, v in body.items() if k not in ("HostConfig", "NetworkingConfig")}
        # The daemon merges the image's config under the request's (env by variable name).
        inherited = image["Config"]
        env = {e.split("=", 1)[0]: e for e in inherited.get("Env") or []}
        env.update({e.split("=", 1)[0]: e for e in own.get("Env") or []})
        config = {
            **CONFIG_DEFAULTS,
            **{k: v for k, v in inherited.items() if k != "Labels"},
            **own,
            "Hostname": own.get("Hostname") or cid[:12],
            "Env": list(env.values()),
            "Labels": {**inherited.get("Labels", {}), **(own.get("Labels") or {})},
            "Cmd": own.get("Cmd") or inherited.get("Cmd"),
        }
        if config.get("Healthcheck") is None:
            config.pop("Healthcheck", None)
        host = {**HOST_DEFAULTS, **(body.get("HostConfig") or {})}
        endpoints = (body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {
            host["NetworkMode"]: {}
        }
        networks = {
            net: {
                "IPAMConfig": ep.get("IPAMConfig"),
                "Links": None,
                "Aliases": ep.get("Aliases") or [],
                "NetworkID": hashlib.sha256(net.encode()).hexdigest(),
                "EndpointID": "",
                "Gateway": "",
                "IPAddress": "",
                "IPPrefixLen": 0,
                "MacAddress": "",
                "DNSNames": None,
            }
            for net, ep in endpoints.items()
        }
        cmd = (config.get("Entrypoint") or []) + (config.get("Cmd") or [])
        # Shape: ContainerInspectResponse (GET /containers/{id}/json).
        self._containers[cid] = {
            **copy.deepcopy(INSPECT_STATIC),
            "Id": cid,
            "Created": iso(datetime.now(UTC)),
            "Path": cmd[0] if cmd else "",
            "Args": cmd[1:],
            "Image": image["Id"],
            "Name": f"/{name}",
            "RestartCount": 0,
            "Config": config,
            "HostConfig": host,
            "State": {
                "Status": "created",
                "Running": False,
                "Paused": False,
                "Restarting": False,
                "OOMKilled": False,
                "Dead": False,
                "Pid": 0,
                "ExitCode": 0,
                "Error": "",
                "StartedAt": NEVER,
                "FinishedAt": NEVER,
                **(
                    {"Health": {"Status": "starting", "FailingStreak": 0, "Log": []}}
                    if "Healthcheck" in config
                    else {}
                ),
            },
            "NetworkSettings": {"Bridge": "", "SandboxID": "", "Ports": {}, "Networks": networks},
        }
        self._usage[cid] = (48 * 2**20, 1.5)
        self._logs[cid] = [
            (1, f"INFO starting {config['Image']}"),
            (1, "INFO listening on 0.0.0.0:8080"),
        ]
        return cid

    def _start(self, c: dict[str, Any]) -> None:
        state = c["State"]
        state.update(
            Status="running",
            Running=True,
            Restarting=False,
            OOMKilled=False,
            ExitCode=0,
            Pid=self._random.randrange(1000, 60000),
            StartedAt=iso(datetime.now(UTC)),
        )
        if "Health" in state:
            state["Health"].update(Status="healthy", FailingStreak=0)
        for i, net in enumerate(c["NetworkSettings"]["Networks"].values()):
            net.update(
                IPAddress=f"172.18.{i}.{self._random.randrange(2, 250)}",
                IPPrefixLen=16,
                Gateway=f"172.18.{i}.1",
                EndpointID=f"{self._random.getrandbits(256):064x}",
            )
        if c["Config"]["Image"] in self.crashing_images:
            state.update(Status="restarting", Restarting=True, ExitCode=1, Pid=0)
            c["RestartCount"] += 3
            if "Health" in state:
                state["Health"].update(Status="unhealthy", FailingStreak=3)
            self._logs[c["Id"]].append((2, "FATAL config: missing required setting DATABASE_URL"))

    def _stop(self, c: dict[str, Any], signal_exit: int = 0) -> None:
        c["State"].update(
            Status="exited",
            Running=False,
            Restarting=False,
            Pid=0,
            ExitCode=signal_exit,
            FinishedAt=iso(datetime.now(UTC)),
        )
        if "Health" in c["State"]:
            c["State"]["Health"]["Status"] = "unhealthy"
