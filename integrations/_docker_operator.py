"""Docker writes: restarts, recreates with another image or environment, compose scaling."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr

from integrations._docker_models import NUMBER, PREVIOUS_IMAGE, container_info
from integrations._docker_session import DockerSession
from integrations._sync_client import Preview, run_probes
from integrations.errors import ConfigError, NotFound, OncallError, ProviderError

__all__ = ["DockerOperator"]


def _own_config(c: dict[str, Any], image_config: dict[str, Any]) -> dict[str, Any]:
    # Keep only what the container set itself: values equal to the old image's defaults are
    # dropped so the new image's own defaults (its ENV, CMD, labels ...) apply, as with compose.
    config, base = c["Config"], image_config or {}
    own = {k: v for k, v in config.items() if k not in ("Image", "Hostname") and v != base.get(k)}
    if config.get("Hostname") and config["Hostname"] != c["Id"][:12]:
        own["Hostname"] = config["Hostname"]
    own["Env"] = [e for e in config.get("Env") or [] if e not in (base.get("Env") or [])]
    base_labels = base.get("Labels") or {}
    own["Labels"] = {
        k: v for k, v in (config.get("Labels") or {}).items() if base_labels.get(k) != v
    }
    return own


def _env(config: dict[str, Any]) -> dict[str, str]:
    return dict(e.split("=", 1) if "=" in e else (e, "") for e in config.get("Env") or [])


def _plain(value: SecretStr | str) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


class DockerOperator(DockerSession):
    """Restarts, re-images and scales containers; built only inside approved remediations."""

    # -- restart ---------------------------------------------------------------------------
    def preview_restart(self, container: str) -> Preview:
        """Shows the container a restart would stop and start."""
        c = container_info(self._inspect(container))
        return Preview(
            action="restart",
            target=f"container {container}",
            touches=[container],
            summary=f"restart container {container} ({c.status}, image {c.image}); "
            "it is down for a few seconds",
            before={"started_at": c.started_at, "restart_count": c.restart_count},
        )

    def restart(
        self, container: str, *, not_before: datetime | None = None, timeout: int = 10
    ) -> str:
        """Stops (SIGTERM, then SIGKILL after ``timeout`` s) and starts a container.

        Blast radius: this one container; its in-flight requests fail while it restarts.
        With ``not_before``, a start already made since then is not repeated.
        """
        c = container_info(self._inspect(container))
        when = not_before if not not_before or not_before.tzinfo else not_before.replace(tzinfo=UTC)
        if when and c.running and c.started_at and c.started_at >= when:
            return (
                f"container {container} was already restarted at {c.started_at:%Y-%m-%d %H:%M:%S}Z"
            )
        self._call(f"restart {container}", self._api().restart, container, timeout=timeout)
        after = container_info(self._inspect(container))
        return f"restarted container {container} (was {c.status}); now {after.status}" + (
            f", health {after.health}" if after.health else ""
        )

    # -- recreate with another image or environment -----------------------------------------
    def preview_recreate(self, container: str, image: str) -> Preview:
        """Shows the image change a recreate would make."""
        c = self._inspect(container)
        target = self._call(f"inspect image {image}", self._api().inspect_image, image)
        noop = c["Config"]["Image"] == image and c["Image"] == target["Id"]
        return Preview(
            action="recreate_with_image",
            target=f"container {container}",
            noop=noop,
            summary=(
                f"container {container} already runs {image}"
                if noop
                else f"recreate container {container} with image {image} "
                f"(was {c['Config']['Image']}): "
                "stop it, create its replacement with the same config, remove the old one"
            ),
            before={"image": c["Config"]["Image"], "image_id": c["Image"]},
            after={"image": image, "image_id": target["Id"]},
            touches=[] if noop else [container],
        )

    def recreate_with_image(self, container: str, image: str) -> str:
        """Replaces a container by one with the same config and another image (the Docker rollback).

        Blast radius: this one container is down from its stop until its replacement starts;
        the image must already be on the host. A compose file still naming the old tag will
        recreate it on the next ``docker compose up``.
        """
        preview = self.preview_recreate(container, image)
        if preview.noop:
            return preview.summary
        old = self._inspect(container)
        self._recreate(old, image=image, env={})
        return (
            f"recreated container {container} with image {image} (was {preview.before['image']}); "
            "the old container was removed"
        )

    def preview_env(self, container: str, env_updates: Mapping[str, SecretStr | str]) -> Preview:
        """Shows which environment variables a recreate would change; never their values."""
        current = _env(self._inspect(container)["Config"])
        changed = sorted(k for k, v in env_updates.items() if current.get(k) != _plain(v))
        noop = not changed
        return Preview(
            action="set_env_and_recreate",
            target=f"container {container}",
            noop=noop,
            summary=(
                f"container {container} already has those values for "
                f"{', '.join(sorted(env_updates))}"
                if noop
                else f"recreate container {container} with new values for "
                f"{', '.join(changed)} (values not shown)"
            ),
            before={"keys_present": sorted(k for k in env_updates if k in current)},
            after={"keys_changed": changed},
            touches=[] if noop else [container],
        )

    def set_env_and_recreate(
        self, container: str, env_updates: Mapping[str, SecretStr | str]
    ) -> str:
        """Recreates a container with some environment variables changed; values are never shown.

        Blast radius: this one container is down from its stop until its replacement starts.
        """
        preview = self.preview_env(container, env_updates)
        if preview.noop:
            return preview.summary
        old = self._inspect(container)
        self._recreate(
            old, image=old["Config"]["Image"], env={k: _plain(v) for k, v in env_updates.items()}
        )
        keys = ", ".join(preview.after["keys_changed"])
        return f"recreated container {container} with new values for {keys} (values not shown)"

    def _recreate(
        self,
        old: dict[str, Any],
        *,
        image: str,
        env: dict[str, str],
        name: str = "",
        labels: dict[str, str] | None = None,
        replace: bool = True,
    ) -> str:
        api, oid = self._api(), old["Id"]
        name = name or old["Name"].lstrip("/")
        base = self._call(f"inspect image {old['Image'][:19]}", api.inspect_image, old["Image"])
        config = _own_config(old, base.get("Config") or {})
        if env:
            config["Env"] = [f"{k}={v}" for k, v in {**_env(config), **env}.items()]
        config["Labels"].update(labels or {})
        if image != old["Config"]["Image"]:
            config["Labels"][PREVIOUS_IMAGE] = old["Config"]["Image"]
        config["Image"] = image
        config["HostConfig"] = old["HostConfig"]
        old_name = old["Name"].lstrip("/")
        config["NetworkingConfig"] = {
            "EndpointsConfig": {
                net: {
                    "IPAMConfig": ep.get("IPAMConfig"),
                    "Aliases": [
                        name if a == old_name else a
                        for a in ep.get("Aliases") or []
                        if a != oid[:12]
                    ],
                }
                for net, ep in (old["NetworkSettings"].get("Networks") or {}).items()
            }
        }
        if not replace:
            new_id = self._call(
                f"create {name}", api.create_container_from_config, config, name=name
            )["Id"]
            self._call(f"start {name}", api.start, new_id)
            return new_id
        was_running, parked = old["State"]["Running"], f"{name}-replaced-{oid[:12]}"
        self._call(f"stop {name}", api.stop, oid, timeout=(old["Config"].get("StopTimeout") or 10))
        self._call(f"rename {name}", api.rename, oid, parked)
        new_id = None
        try:
            new_id = self._call(
                f"create {name}", api.create_container_from_config, config, name=name
            )["Id"]
            if was_running:
                self._call(f"start {name}", api.start, new_id)
        except OncallError as exc:
            self._restore(oid, name, was_running, new_id, exc)
            raise
        self._call(f"remove replaced {parked}", api.remove_container, oid)
        return new_id

    def _restore(
        self, oid: str, name: str, was_running: bool, new_id: str | None, exc: OncallError
    ) -> None:
        # Put the old container back under its name; if even that fails, say where it is.
        api = self._api()
        try:
            if new_id:
                self._call(f"remove failed {name}", api.remove_container, new_id, force=True)
            self._call(f"rename back {name}", api.rename, oid, name)
            if was_running:
                self._call(f"restart old {name}", api.start, oid)
        except OncallError as again:
            raise ProviderError(
                f"{exc}; restoring the old container also failed ({again}): it is kept "
                f"as {name}-replaced-{oid[:12]}",
                target=self.target.label,
            ) from exc

    # -- scale -----------------------------------------------------------------------------
    def preview_scale(self, project: str, service: str, replicas: int) -> Preview:
        """Shows the containers a scale would start, create or remove."""
        if replicas < 0:
            raise ConfigError(f"replicas must be 0 or more, not {replicas}")
        members = self._members(project, service)
        keep, drop = members[:replicas], members[replicas:]
        start = [c["Name"].lstrip("/") for c in keep if not c["State"]["Running"]]
        top = max((int(c["Config"]["Labels"].get(NUMBER, "0") or 0) for c in members), default=0)
        create = [f"{project}-{service}-{top + i}" for i in range(1, replicas - len(keep) + 1)]
        if create and not members:
            raise NotFound(
                f"compose service {project}/{service} has no container to copy",
                target=self.target.label,
            )
        if create and any(
            b.get("HostPort")
            for binds in (members[0]["HostConfig"].get("PortBindings") or {}).values()
            for b in binds or []
        ):
            raise ConfigError(
                f"compose service {project}/{service} publishes fixed host ports; a second "
                "container could not bind them"
            )
        running = sum(c["State"]["Running"] for c in members)
        noop = not (start or create or drop)
        where = f"compose service {project}/{service}"
        return Preview(
            action="scale_service",
            target=where,
            noop=noop,
            summary=(
                f"{where} is already at {replicas} containers"
                if noop
                else f"scale {where} from {running} to {replicas} running containers"
                + (f"; create {', '.join(create)}" if create else "")
                + (f"; start {', '.join(start)}" if start else "")
                + (f"; remove {', '.join(c['Name'].lstrip('/') for c in drop)}" if drop else "")
            ),
            before={"running": running, "containers": [c["Name"].lstrip("/") for c in members]},
            after={"running": replicas, "create": create, "start": start},
            touches=[c["Name"].lstrip("/") for c in drop],
        )

    def scale_service(self, project: str, service: str, replicas: int) -> str:
        """Creates or removes containers of a compose service, as ``docker compose up --scale``.

        Blast radius: removed containers (the highest numbers) stop with their in-flight work.
        """
        preview = self.preview_scale(project, service, replicas)
        if preview.noop:
            return preview.summary
        api, members = self._api(), self._members(project, service)
        for c in members[replicas:]:
            self._call(f"stop {c['Name']}", api.stop, c["Id"])
            self._call(f"remove {c['Name']}", api.remove_container, c["Id"])
        for name in preview.after["start"]:
            self._call(f"start {name}", api.start, name)
        created = preview.after["create"]
        if created:
            self._create_like(members, created, f"compose service {project}/{service}")
        return (
            f"scaled compose service {project}/{service} from {preview.before['running']} to "
            + (
                f"{replicas} running containers"
                + (f" (created {', '.join(created)})" if created else "")
            )
        )

    def _create_like(self, members: list[dict[str, Any]], names: list[str], where: str) -> None:
        """Creates the named containers as copies of a running member (or the first)."""
        template = next(
            (c for c in members if c["State"]["Running"]), members[0] if members else None
        )
        if template is None:
            # The preview saw containers to copy; they went before we could read them again.
            raise NotFound(f"{where} has no container to copy", target=self.target.label)
        for name in names:
            self._recreate(
                template,
                image=template["Config"]["Image"],
                env={},
                name=name,
                replace=False,
                labels={NUMBER: name.rsplit("-", 1)[1]},
            )

    async def preflight(self) -> dict[str, bool | str]:
        """Checks that the daemon answers and the container can be inspected."""
        return await run_probes(
            {
                "ping": lambda: self._call("ping", self._api().ping),
                "inspect_container": lambda: self._inspect(self._resolve(None)),
            }
        )
