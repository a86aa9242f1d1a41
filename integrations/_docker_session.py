"""The connection and the reads both Docker clients share, and the error translation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import docker
import docker.errors
import requests

from integrations._docker_models import NUMBER, PROJECT, SERVICE, DockerTarget
from integrations._sync_client import SyncSession
from integrations.errors import (
    ConfigError,
    NotFound,
    OncallError,
    ProviderError,
    Timeout,
    Unreachable,
    error_for_status,
)

__all__ = ["DockerSession", "translate_error"]

T = TypeVar("T")


def translate_error(exc: BaseException, target: str, what: str) -> OncallError:
    """Maps a docker-SDK or requests error to the most specific error of our tree."""
    prefix = f"{target}: {what}"
    if isinstance(exc, docker.errors.APIError):
        code = exc.status_code or 0
        message = f"{prefix}: HTTP {code}: {exc.explanation or exc}"
        return error_for_status(code, message, target=target)
    cause = exc.__cause__ if isinstance(exc, docker.errors.DockerException) else exc
    if isinstance(cause, requests.exceptions.ConnectionError):
        return Unreachable(f"{prefix}: cannot connect to the Docker daemon", target=target)
    if isinstance(cause, requests.exceptions.Timeout):
        return Timeout(f"{prefix}: no answer in time", target=target)
    if isinstance(exc, docker.errors.TLSParameterError | docker.errors.InvalidArgument):
        return ConfigError(f"{prefix}: {exc}")
    return ProviderError(f"{prefix}: {type(exc).__name__}: {exc}", target=target)


class DockerSession(SyncSession[docker.DockerClient]):
    """Connection handling and the reads both classes need."""

    def __init__(self, target: DockerTarget, *, client: docker.DockerClient | None = None) -> None:
        super().__init__(target, client)

    def _api(self) -> docker.APIClient:
        return self._sdk().api

    def _open(self) -> docker.DockerClient:
        t = self.target
        tls: Any = False
        if t.tls_ca_cert or t.tls_client_cert:
            cert = (t.tls_client_cert, t.tls_client_key) if t.tls_client_cert else None
            tls = docker.tls.TLSConfig(
                client_cert=cert, ca_cert=t.tls_ca_cert, verify=bool(t.tls_ca_cert)
            )
        try:
            # version="auto" asks the daemon which API version it speaks (one request).
            return docker.DockerClient(
                base_url=t.base_url, version="auto", timeout=t.timeout, tls=tls
            )
        except docker.errors.DockerException as exc:
            raise translate_error(exc, t.label, "connect") from exc

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise translate_error(exc, self.target.label, what) from exc

    def _inspect(self, name: str) -> dict[str, Any]:
        return self._call(f"inspect container {name}", self._api().inspect_container, name)

    def _members(self, project: str, service: str) -> list[dict[str, Any]]:
        filters = {"label": [f"{PROJECT}={project}", f"{SERVICE}={service}"]}
        found = self._call(
            f"list containers of {project}/{service}",
            self._api().containers,
            all=True,
            filters=filters,
        )
        members = [self._inspect(c["Id"]) for c in found]
        return sorted(
            members, key=lambda c: int((c["Config"]["Labels"] or {}).get(NUMBER, "0") or 0)
        )

    def _resolve(self, name: str | None) -> str:
        if name or self.target.container:
            return name or self.target.container or ""
        t = self.target
        if not (t.compose_project and t.compose_service):
            raise ConfigError(f"{t.label}: name a container or a compose project and service")
        members = self._members(t.compose_project, t.compose_service)
        running = [c for c in members if c["State"]["Running"]] or members
        if not running:
            raise NotFound(f"{t.label}: compose service has no containers", target=t.label)
        return running[0]["Name"].lstrip("/")
