"""Kubernetes writes: rollout restart and undo, scale, memory limits and secrets, with previews."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from kubernetes import client as k8s
from kubernetes.utils.quantity import parse_quantity
from pydantic import SecretStr

from integrations._kube_models import HASH_LABEL, RESTARTED_AT, REVISION
from integrations._kube_session import (
    KubeSession,
    annotations_of,
    aware_utc,
    container_resources,
    meta,
    pod_spec,
    rs_revision,
    rs_template,
    template_images,
)
from integrations._sync_client import Preview, run_probes
from integrations.errors import ConfigError, NotFound, ProviderError

__all__ = ["KubernetesOperator"]

T = TypeVar("T")

# Deployment annotations that `kubectl rollout undo` keeps instead of copying from the ReplicaSet.
_KEEP_ON_UNDO = {
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
}


def _quantity(value: str, what: str) -> Decimal:
    try:
        return parse_quantity(value)
    except ValueError as exc:
        raise ConfigError(
            f"{what}: {value!r} is not a Kubernetes quantity (e.g. 512Mi, 1Gi)"
        ) from exc


_STRATEGIC_MERGE = "application/strategic-merge-patch+json"
_JSON_PATCH = "application/json-patch+json"
_MERGE_PATCH = "application/merge-patch+json"


class KubernetesOperator(KubeSession):
    """Changes deployments and secrets like kubectl; built only inside approved remediations."""

    def _patch(
        self, what: str, method: Callable[..., T], name: str, body: Any, content_type: str
    ) -> T:
        """Sends one patch of the given content type to a named object of our namespace."""
        return self._call(
            what, method, name, self.target.namespace, body, _content_type=content_type
        )

    def _patch_deployment(
        self, what: str, deployment: str, body: Any, content_type: str = _STRATEGIC_MERGE
    ) -> k8s.V1Deployment:
        method = self._apps().patch_namespaced_deployment
        return self._patch(what, method, deployment, body, content_type)

    def _where(self, deployment: str) -> str:
        return f"deployment {self.target.namespace}/{deployment}"

    # -- rollout restart -------------------------------------------------------------------
    def preview_restart(self, deployment: str) -> Preview:
        """Shows which pods a rollout restart would replace."""
        dep = self._deployment(deployment)
        pods = [meta(p).name for p in self._pods(dep)]
        return Preview(
            action="rollout_restart",
            target=self._where(deployment),
            summary=f"restart {self._where(deployment)}: replace its {len(pods)} pods one by one",
            before={"restartedAt": annotations_of(dep.spec.template).get(RESTARTED_AT)},
            touches=pods,
        )

    def rollout_restart(self, deployment: str, *, not_before: datetime | None = None) -> str:
        """Replaces every pod by annotating the pod template, as ``kubectl rollout restart`` does.

        Blast radius: every pod of the deployment is replaced, at the pace of its rolling-update
        strategy. With ``not_before``, a restart already made since then is not repeated.
        """
        dep = self._deployment(deployment)
        if dep.spec.paused:
            raise ProviderError(
                f"{self._where(deployment)} is paused; resume it before restarting",
                target=self.target.label,
            )
        previous = annotations_of(dep.spec.template).get(RESTARTED_AT)
        if not_before and previous and datetime.fromisoformat(previous) >= aware_utc(not_before):
            return f"{self._where(deployment)} was already restarted at {previous}"
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        patch = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}}
        after = self._patch_deployment(f"restart {deployment}", deployment, patch)
        revision = annotations_of(after).get(REVISION, "?")
        return (
            f"restarted {self._where(deployment)} at {stamp}: revision {revision} replaces "
            f"its {after.spec.replicas} pods"
        )

    # -- rollout undo ----------------------------------------------------------------------
    def _undo_plan(
        self, deployment: str, to_revision: int | None
    ) -> tuple[k8s.V1Deployment, k8s.V1ReplicaSet, Preview]:
        dep = self._deployment(deployment)
        history = self._replicasets(dep)
        revisions = [rs_revision(rs) for rs in history]
        if to_revision is None:
            if len(history) < 2:
                raise NotFound(
                    f"no rollout history found for {self._where(deployment)}: it has only "
                    f"revision {revisions[-1] if revisions else 'none'}",
                    target=self.target.label,
                )
            chosen = history[-2]
        else:
            found = next((rs for rs in history if rs_revision(rs) == to_revision), None)
            if found is None:
                raise NotFound(
                    f"unable to find revision {to_revision} in the history of "
                    f"{self._where(deployment)} (revisions: {revisions})",
                    target=self.target.label,
                )
            chosen = found
        current = int(annotations_of(dep).get(REVISION, "0"))
        now, then = template_images(dep.spec.template), template_images(rs_template(chosen))
        noop = _same_template(self._client(), rs_template(chosen), dep.spec.template)
        preview = Preview(
            action="rollout_undo",
            target=self._where(deployment),
            summary=(
                f"nothing to do: {self._where(deployment)} already runs the template of revision "
                f"{rs_revision(chosen)} ({', '.join(then)})"
            )
            if noop
            else (
                f"roll back {self._where(deployment)} from revision {current} ({', '.join(now)}) "
                f"to revision {rs_revision(chosen)} ({', '.join(then)}), replacing its pods"
            ),
            noop=noop,
            before={"revision": current, "images": now},
            after={
                "revision": rs_revision(chosen),
                "images": then,
                "replicaset": meta(chosen).name,
            },
            touches=[] if noop else [meta(p).name for p in self._pods(dep)],
        )
        return dep, chosen, preview

    def preview_undo(self, deployment: str, to_revision: int | None = None) -> Preview:
        """Shows the revision and images a rollback would go from and to."""
        return self._undo_plan(deployment, to_revision)[2]

    def rollout_undo(self, deployment: str, to_revision: int | None = None) -> str:
        """Rolls back to ``to_revision`` (default: the previous one) like ``kubectl rollout undo``.

        Blast radius: every pod of the deployment is replaced by pods of the older template.
        The patch is guarded by the deployment's resourceVersion, so a rollout that lands
        between our read and our write makes this fail instead of being overwritten.
        """
        dep, chosen, preview = self._undo_plan(deployment, to_revision)
        if preview.noop:
            return f"skipped rollback: {preview.summary.removeprefix('nothing to do: ')}"
        template = self._client().sanitize_for_serialization(rs_template(chosen))
        template.get("metadata", {}).get("labels", {}).pop(HASH_LABEL, None)
        notes = {k: v for k, v in annotations_of(dep).items() if k in _KEEP_ON_UNDO}
        notes.update({k: v for k, v in annotations_of(chosen).items() if k not in _KEEP_ON_UNDO})
        patch = [
            {
                "op": "test",
                "path": "/metadata/resourceVersion",
                "value": meta(dep).resource_version,
            },
            {"op": "replace", "path": "/spec/template", "value": template},
            {"op": "add", "path": "/metadata/annotations", "value": notes},
        ]
        try:
            after = self._patch_deployment(
                f"roll back {deployment}", deployment, patch, _JSON_PATCH
            )
        except ProviderError as exc:
            if exc.status == 422 and "resourceVersion" in str(exc):
                raise ProviderError(
                    f"{self._where(deployment)} changed while rolling back; nothing was "
                    "changed, re-plan and try again",
                    target=self.target.label,
                    status=422,
                ) from exc
            raise
        now = annotations_of(after).get(REVISION, "?")
        return (
            f"rolled back {self._where(deployment)} from revision {preview.before['revision']} "
            f"({', '.join(preview.before['images'])}) to the template of revision "
            f"{preview.after['revision']} ({', '.join(preview.after['images'])}); "
            f"it is now revision {now}"
        )

    # -- scale -----------------------------------------------------------------------------
    def preview_scale(self, deployment: str, replicas: int) -> Preview:
        """Shows the replica count a scale would go from and to."""
        if replicas < 0:
            raise ConfigError(f"replicas must be 0 or more, not {replicas}")
        scale = self._call(
            f"read scale of {deployment}",
            self._apps().read_namespaced_deployment_scale,
            deployment,
            self.target.namespace,
        )
        now = (scale.spec.replicas if scale.spec else None) or 0
        return Preview(
            action="scale",
            target=self._where(deployment),
            summary=(
                f"{self._where(deployment)} is already at {replicas} replicas"
                if now == replicas
                else f"scale {self._where(deployment)} from {now} to {replicas} replicas"
            ),
            noop=now == replicas,
            before={"replicas": now},
            after={"replicas": replicas},
        )

    def scale(self, deployment: str, replicas: int) -> str:
        """Sets the deployment's replica count through the scale subresource.

        Blast radius: scaling down stops the surplus pods and their in-flight work.
        """
        preview = self.preview_scale(deployment, replicas)
        if preview.noop:
            return preview.summary
        self._patch(
            f"scale {deployment}",
            self._apps().patch_namespaced_deployment_scale,
            deployment,
            {"spec": {"replicas": replicas}},
            _MERGE_PATCH,
        )
        before = preview.before["replicas"]
        return f"scaled {self._where(deployment)} from {before} to {replicas} replicas"

    # -- memory limit ----------------------------------------------------------------------
    def preview_memory_limit(self, deployment: str, container: str, limit: str) -> Preview:
        """Shows the memory limit a change would go from and to, and the pods it replaces."""
        wanted = _quantity(limit, "memory limit")
        dep = self._deployment(deployment)
        spec = next(
            (c for c in pod_spec(dep.spec.template).containers if c.name == container), None
        )
        if spec is None:
            names = ", ".join(c.name for c in pod_spec(dep.spec.template).containers)
            raise NotFound(
                f"{self._where(deployment)} has no container {container!r} (it has {names})",
                target=self.target.label,
            )
        limits, requests = container_resources(spec)
        now, request = limits.get("memory"), requests.get("memory")
        if request and _quantity(request, "memory request") > wanted:
            raise ConfigError(
                f"container {container} requests {request}, above the new limit {limit}; "
                "a limit below the request is rejected by the API server"
            )
        noop = now is not None and _quantity(now, "memory limit") == wanted
        return Preview(
            action="set_memory_limit",
            target=f"{self._where(deployment)} container {container}",
            summary=(
                f"container {container} of {self._where(deployment)} already has memory limit {now}"
                if noop
                else f"set the memory limit of container {container} in "
                f"{self._where(deployment)} from {now or 'none'} to {limit}, replacing its pods"
            ),
            noop=noop,
            before={"memory_limit": now},
            after={"memory_limit": limit},
            touches=[] if noop else [meta(p).name for p in self._pods(dep)],
        )

    def set_memory_limit(self, deployment: str, container: str, limit: str) -> str:
        """Sets a container's memory limit in the pod template, which rolls out new pods.

        Blast radius: every pod of the deployment is replaced; pods may no longer fit on nodes.
        """
        preview = self.preview_memory_limit(deployment, container, limit)
        if preview.noop:
            return preview.summary
        patch = {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {"name": container, "resources": {"limits": {"memory": limit}}}
                        ]
                    }
                }
            }
        }
        after = self._patch_deployment(f"set memory limit of {deployment}", deployment, patch)
        revision = annotations_of(after).get(REVISION, "?")
        return (
            f"set the memory limit of container {container} in {self._where(deployment)} from "
            f"{preview.before['memory_limit'] or 'none'} to {limit}; "
            f"revision {revision} replaces its pods"
        )

    # -- secrets ---------------------------------------------------------------------------
    def preview_secret(self, name: str, key: str, value: SecretStr | str) -> Preview:
        """Shows whether a secret key would change; never shows a value."""
        secret = self._call(
            f"read secret {name}", self._core().read_namespaced_secret, name, self.target.namespace
        )
        current = (secret.data or {}).get(key)
        noop = current == _b64(value)
        where = f"secret {self.target.namespace}/{name}"
        return Preview(
            action="patch_secret",
            target=f"{where} key {key}",
            summary=(
                f"key {key} of {where} already holds that value"
                if noop
                else f"{'replace' if current else 'add'} key {key} of {where} (value not shown)"
            ),
            noop=noop,
            before={"key_present": current is not None},
            after={"key_present": True},
        )

    def patch_secret(self, name: str, key: str, value: SecretStr | str) -> str:
        """Sets one key of a secret; the value never appears in logs, messages or reprs.

        Blast radius: pods reading the key from a mounted volume see it within a minute; pods
        reading it as an environment variable keep the old value until restarted.
        """
        preview = self.preview_secret(name, key, value)
        if preview.noop:
            return preview.summary
        self._patch(
            f"patch secret {name}",
            self._core().patch_namespaced_secret,
            name,
            {"data": {key: _b64(value)}},
            _STRATEGIC_MERGE,
        )
        return (
            f"updated key {key} of secret {self.target.namespace}/{name} (value not shown); "
            "pods using it as an environment variable need a restart to see it"
        )

    async def preflight(self) -> dict[str, bool | str]:
        """Asks the API server (SelfSubjectAccessReview) whether each write is allowed."""
        return await run_probes(
            {
                "patch_deployments": lambda: self.may("patch", "deployments"),
                "scale_deployments": lambda: self.may("patch", "deployments", "scale"),
                "patch_secrets": lambda: self.may("patch", "secrets"),
            }
        )


def _b64(value: SecretStr | str) -> str:
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    return base64.b64encode(raw.encode()).decode()


def _same_template(api: k8s.ApiClient, a: k8s.V1PodTemplateSpec, b: k8s.V1PodTemplateSpec) -> bool:
    # kubectl's equalIgnoreHash: compare templates without the pod-template-hash label.
    first, second = api.sanitize_for_serialization(a), api.sanitize_for_serialization(b)
    for t in (first, second):
        t.setdefault("metadata", {}).setdefault("labels", {}).pop(HASH_LABEL, None)
    return first == second
