"""Where the app reads its 100ms management token, and reading it without ever showing it."""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import KW_ONLY, dataclass
from typing import Literal

from pydantic import SecretStr

from checks.evidence.hms import TokenApp
from integrations.docker import DockerReader
from integrations.errors import ConfigError, NotFound, ProviderError, TargetError
from integrations.hms import HmsClient, HmsTarget, token_expiry
from integrations.kubernetes import KubernetesReader

__all__ = ["SourceKind", "TokenSource"]

SourceKind = Literal["kubernetes", "docker", "config", "self-signed"]


@dataclass(eq=False, repr=False)
class TokenSource:
    """Where the app reads its management token; reads it without ever showing it."""

    hms: HmsTarget
    _: KW_ONLY
    kubernetes: KubernetesReader | None = None
    docker: DockerReader | None = None
    secret: str = "hms-credentials"
    key: str = "HMS_MANAGEMENT_TOKEN"

    def __repr__(self) -> str:
        return f"TokenSource({self.where})"

    @property
    def kind(self) -> SourceKind:
        if self.kubernetes is not None:
            return "kubernetes"
        if self.docker is not None:
            return "docker"
        return "config" if self.hms.management_token is not None else "self-signed"

    @property
    def where(self) -> str:
        """Names the place, e.g. 'secret hms-credentials key HMS_MANAGEMENT_TOKEN'."""
        if self.kubernetes is not None:
            ns = self.kubernetes.target.namespace
            return f"secret {self.secret} key {self.key} (namespace {ns})"
        if self.docker is not None:
            return f"environment variable {self.key} of {self.docker.target.label}"
        if self.kind == "config":
            return "oncall's configuration (hms.management_token)"
        return "not visible to oncall (it signs its own tokens from the app secret)"

    async def read(self) -> SecretStr | None:
        """The token the app uses; None when oncall cannot see it (self-signed)."""
        if self.kubernetes is not None:
            return await asyncio.to_thread(_secret_value, self.kubernetes, self.secret, self.key)
        if self.docker is not None:
            return await asyncio.to_thread(_env_value, self.docker, self.key)
        return self.hms.management_token

    async def target(self) -> HmsTarget:
        """The HmsTarget that sends the app's token (so a probe sees what the app sees)."""
        token = await self.read()
        if token is None:
            return self.hms
        return self.hms.model_copy(update={"management_token": token})

    async def app(self) -> TokenApp:
        """What reads the token: the deployment and its pods, or the containers."""
        if self.kubernetes is not None:
            reader = self.kubernetes
            pods = await asyncio.to_thread(reader.pods)
            return TokenApp(
                kind="kubernetes",
                namespace=reader.target.namespace,
                deployment=reader.target.deployment,
                pods=[p.name for p in pods],
            )
        if self.docker is not None:
            containers = await asyncio.to_thread(_containers, self.docker)
            return TokenApp(kind="docker", containers=containers)
        return TokenApp(kind=self.kind)

    async def accepted(self, warn_seconds: float) -> str | None:
        """Says so when the token the app reads is a valid management token 100ms accepts
        (someone rotated it already); None when it is not, or cannot be read."""
        token = await self.read()
        if token is None:
            return None
        try:
            expiry = token_expiry(token, soon=int(warn_seconds))
        except ConfigError:
            return None
        if expiry.expired or expiry.expiring_soon or expiry.token_type != "management":
            return None
        probe = self.hms.model_copy(update={"management_token": token, "retries": 0})
        try:
            async with HmsClient(probe) as client:
                await client.list_rooms(limit=1)
        except TargetError:
            return None
        return f"{self.where} already holds a token 100ms accepts ({expiry.sentence})"


# The readers list secrets' and containers' metadata only; reading one value is done here,
# through their own error translation, because only this check needs it.
def _secret_value(reader: KubernetesReader, name: str, key: str) -> SecretStr:
    ns = reader.target.namespace
    secret = reader._call(f"read secret {name}", reader._core().read_namespaced_secret, name, ns)
    data = (secret.data or {}).get(key)
    if data is None:
        raise NotFound(
            f"{reader.target.label}: secret {name} has no key {key}", target=reader.target.label
        )
    try:
        return SecretStr(base64.b64decode(data).decode())
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ProviderError(
            f"{reader.target.label}: key {key} of secret {name} is not base64 text",
            target=reader.target.label,
        ) from exc


def _env_value(reader: DockerReader, key: str) -> SecretStr:
    name = reader._resolve(None)
    env = reader._inspect(name)["Config"].get("Env") or []
    for entry in env:
        variable, _, value = entry.partition("=")
        if variable == key:
            return SecretStr(value)
    raise NotFound(
        f"{reader.target.label}: container {name} has no environment variable {key}",
        target=reader.target.label,
    )


def _containers(reader: DockerReader) -> list[str]:
    t = reader.target
    if t.compose_project and t.compose_service and not t.container:
        return [c.name for c in reader.service_containers() if c.running]
    return [reader.container().name]
