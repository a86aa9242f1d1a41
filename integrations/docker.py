"""Docker: container state, stats, logs and image history; restarts, rollbacks and scaling.

Built on the official ``docker`` SDK, which is synchronous: both classes are sync and runbooks
call them in threads; only ``preflight`` is async, for the health sweep. ``DockerReader`` only
reads. ``DockerOperator`` writes and is built only inside an approved remediation. Rolling a
container to another image (or new environment) is done the Docker way, as compose does it:
stop, park the old container under another name, create the new one with the same config,
start it, then remove the old one, putting the old one back if any step fails.

This module is the public front: the reader lives here, the settings and shapes in
``_docker_models``, the shared connection in ``_docker_session``, the writes in
``_docker_operator``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from integrations._docker_models import (
    PREVIOUS_IMAGE,
    PROJECT,
    SERVICE,
    ContainerInfo,
    ContainerStats,
    DockerTarget,
    ImageLayer,
    ImageRecord,
    container_info,
)
from integrations._docker_operator import DockerOperator
from integrations._docker_session import DockerSession, translate_error
from integrations._sync_client import Preview, run_probes
from integrations.errors import ConfigError

__all__ = [
    "ContainerInfo",
    "ContainerStats",
    "DockerOperator",
    "DockerReader",
    "DockerTarget",
    "ImageLayer",
    "ImageRecord",
    "Preview",
    "translate_error",
]


def _repo(ref: str) -> str:
    ref = ref.split("@", 1)[0]
    return ref.rpartition(":")[0] if ":" in ref.rsplit("/", 1)[-1] else ref


class DockerReader(DockerSession):
    """Reads container state, stats, logs and image history; never writes."""

    def container(self, name: str | None = None) -> ContainerInfo:
        """Returns a container's status, health, restarts, OOM kill and image."""
        return container_info(self._inspect(self._resolve(name)))

    def service_containers(
        self, project: str | None = None, service: str | None = None
    ) -> list[ContainerInfo]:
        """Returns every container (running or not) of a compose service, by container number."""
        project, service = (
            project or self.target.compose_project,
            service or self.target.compose_service,
        )
        if not (project and service):
            raise ConfigError(f"{self.target.label}: no compose project and service to list")
        return [container_info(c) for c in self._members(project, service)]

    def containers(self) -> list[ContainerInfo]:
        """Returns the containers the target stands for: those of its compose service when it
        names a project and service but no container (the checks look at every replica), else
        the one container :meth:`container` picks."""
        t = self.target
        if t.compose_project and t.compose_service and not t.container:
            return self.service_containers()
        return [self.container()]

    def stats(self, name: str | None = None) -> ContainerStats:
        """Returns one memory and CPU sample, with the docker CLI's formulas."""
        name = self._resolve(name)
        s = self._call(f"read stats of {name}", self._api().stats, name, stream=False)
        mem = s.get("memory_stats") or {}
        detail = mem.get("stats") or {}
        # Engine API, ContainerStats: used = usage - inactive_file (cgroup v2) or - cache (v1).
        cache = detail.get(
            "inactive_file", detail.get("total_inactive_file", detail.get("cache", 0))
        )
        used, limit = max(0, mem.get("usage", 0) - cache), mem.get("limit", 0)
        cpu, pre = s.get("cpu_stats") or {}, s.get("precpu_stats") or {}
        cpu_delta = cpu.get("cpu_usage", {}).get("total_usage", 0) - pre.get("cpu_usage", {}).get(
            "total_usage", 0
        )
        system_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
        cpus = (
            cpu.get("online_cpus") or len(cpu.get("cpu_usage", {}).get("percpu_usage") or []) or 1
        )
        return ContainerStats(
            name=name,
            memory_usage=used,
            memory_limit=limit,
            memory_percent=round(100.0 * used / limit, 2) if limit else 0.0,
            cpu_percent=round(100.0 * cpu_delta / system_delta * cpus, 2)
            if system_delta > 0
            else 0.0,
            pids=(s.get("pids_stats") or {}).get("current", 0),
        )

    def logs(self, name: str | None = None, *, tail: int = 200) -> str:
        """Returns the last ``tail`` lines of a container's stdout and stderr."""
        name = self._resolve(name)
        raw = self._call(
            f"read logs of {name}", self._api().logs, name, tail=tail, stdout=True, stderr=True
        )
        return raw.decode("utf-8", errors="replace")

    def image_history(self, name: str | None = None) -> list[ImageRecord]:
        """Returns the local images of the container's repository (newest first) and their users."""
        c = self._inspect(self._resolve(name))
        labels = c["Config"].get("Labels") or {}
        peers = [c]
        if labels.get(PROJECT) and labels.get(SERVICE):
            peers = self._members(labels[PROJECT], labels[SERVICE])
        images = self._call("list images", self._api().images, name=_repo(c["Config"]["Image"]))
        return [
            ImageRecord(
                tags=img.get("RepoTags") or [],
                id=img["Id"],
                created=datetime.fromtimestamp(img["Created"], UTC) if img.get("Created") else None,
                current=img["Id"] == c["Image"],
                previous=labels.get(PREVIOUS_IMAGE) in (img.get("RepoTags") or []),
                containers=[p["Name"].lstrip("/") for p in peers if p["Image"] == img["Id"]],
            )
            for img in sorted(images, key=lambda i: i.get("Created", 0), reverse=True)
        ]

    def previous_image(self, name: str | None = None) -> str | None:
        """Returns the image to roll back to: the one we replaced, else the newest older tag."""
        history = self.image_history(name)
        marked = next((r for r in history if r.previous), None)
        if marked:
            return marked.tags[0]
        current = next((i for i, r in enumerate(history) if r.current), None)
        older = history[current + 1 :] if current is not None else []
        return next((r.tags[0] for r in older if r.tags), None)

    def image_layers(self, image: str) -> list[ImageLayer]:
        """Returns an image's build history, newest layer first."""
        rows = self._call(f"read history of {image}", self._api().history, image)
        return [
            ImageLayer(
                created=datetime.fromtimestamp(r["Created"], UTC) if r.get("Created") else None,
                created_by=r.get("CreatedBy", ""),
                size=r.get("Size", 0),
                tags=r.get("Tags") or [],
            )
            for r in rows
        ]

    async def preflight(self) -> dict[str, bool | str]:
        """Checks each read capability; True or the error text."""
        return await run_probes(
            {
                "ping": lambda: self._call("ping", self._api().ping),
                "list_containers": lambda: self._call(
                    "list containers", self._api().containers, limit=1
                ),
                "inspect_container": lambda: self._inspect(self._resolve(None)),
            }
        )
