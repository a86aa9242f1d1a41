"""Kubernetes: a deployment's state, history, pods and events; rollouts, rollbacks and scaling.

Built on the official ``kubernetes`` client, which is synchronous: both classes are sync and
runbooks call them in threads; only ``preflight`` is async, for the health sweep.
``KubernetesReader`` only reads. ``KubernetesOperator`` writes and is built only inside an
approved remediation; its writes mirror kubectl (``rollout restart``, ``rollout undo``,
``scale``) so an engineer can predict them, are idempotent and return a sentence.

This module is the public front: the reader lives here, the settings and shapes in
``_kube_models``, the shared connection in ``_kube_session``, the writes in ``_kube_operator``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s

from integrations._kube_models import (
    HASH_LABEL,
    REVISION,
    Condition,
    ContainerSpec,
    ContainerState,
    DeploymentStatus,
    KubeEvent,
    KubernetesTarget,
    PodState,
    Revision,
)
from integrations._kube_operator import KubernetesOperator
from integrations._kube_session import (
    KubeSession,
    annotations_of,
    as_datetime,
    container_resources,
    meta,
    pod_spec,
    rs_revision,
    rs_template,
    template_images,
    translate_error,
)
from integrations._sync_client import Preview, run_probes

__all__ = [
    "Condition",
    "ContainerState",
    "DeploymentStatus",
    "KubeEvent",
    "KubernetesOperator",
    "KubernetesReader",
    "KubernetesTarget",
    "PodState",
    "Preview",
    "Revision",
    "translate_error",
]


def _container_state(s: k8s.V1ContainerStatus, spec: k8s.V1Container | None) -> ContainerState:
    state, reason, started = "unknown", None, None
    if s.state and s.state.running:
        state, started = "running", as_datetime(s.state.running.started_at)
    elif s.state and s.state.waiting:
        state, reason = "waiting", s.state.waiting.reason
    elif s.state and s.state.terminated:
        state, reason = "terminated", s.state.terminated.reason
    last = s.last_state.terminated if s.last_state else None
    limits, requests = container_resources(spec) if spec else ({}, {})
    return ContainerState(
        name=s.name,
        image=s.image,
        ready=bool(s.ready),
        restart_count=s.restart_count or 0,
        state=state,
        state_reason=reason,
        started_at=started,
        last_termination_reason=last.reason if last else None,
        last_termination_exit_code=last.exit_code if last else None,
        last_terminated_at=as_datetime(last.finished_at) if last else None,
        limits=limits,
        requests=requests,
    )


class KubernetesReader(KubeSession):
    """Reads a deployment's status, rollout history, pods, events and logs; never writes."""

    def deployment(self, name: str | None = None) -> DeploymentStatus:
        """Returns the deployment's replicas, images, generation and conditions."""
        dep = self._deployment(self._name(name))
        spec, status = dep.spec, dep.status or k8s.V1DeploymentStatus()
        containers = []
        for c in pod_spec(spec.template).containers:
            limits, requests = container_resources(c)
            containers.append(
                ContainerSpec(name=c.name, image=c.image or "", limits=limits, requests=requests)
            )
        return DeploymentStatus(
            name=meta(dep).name,
            namespace=meta(dep).namespace,
            revision=int(annotations_of(dep).get(REVISION, "0")),
            generation=meta(dep).generation or 0,
            observed_generation=status.observed_generation or 0,
            paused=bool(spec.paused),
            desired=spec.replicas if spec.replicas is not None else 1,
            ready=status.ready_replicas or 0,
            updated=status.updated_replicas or 0,
            available=status.available_replicas or 0,
            unavailable=status.unavailable_replicas or 0,
            images=[c.image for c in containers],
            containers=containers,
            conditions=[
                Condition(
                    type=c.type,
                    status=c.status,
                    reason=c.reason,
                    message=c.message,
                    last_update=as_datetime(c.last_update_time),
                )
                for c in status.conditions or []
            ],
            selector=",".join(f"{k}={v}" for k, v in (spec.selector.match_labels or {}).items()),
        )

    def revisions(self, name: str | None = None) -> list[Revision]:
        """Returns the rollout history (one entry per ReplicaSet), oldest revision first."""
        dep = self._deployment(self._name(name))
        current = int(annotations_of(dep).get(REVISION, "0"))
        return [
            Revision(
                revision=rs_revision(rs),
                replicaset=meta(rs).name,
                images=template_images(rs_template(rs)),
                created=as_datetime(meta(rs).creation_timestamp),
                replicas=(rs.spec.replicas if rs.spec else None) or 0,
                ready=(rs.status.ready_replicas or 0) if rs.status else 0,
                change_cause=annotations_of(rs).get("kubernetes.io/change-cause"),
                current=rs_revision(rs) == current,
            )
            for rs in self._replicasets(dep)
        ]

    def pods(self, name: str | None = None) -> list[PodState]:
        """Returns the deployment's pods: readiness, restarts, last terminations, resources."""
        dep = self._deployment(self._name(name))
        result = []
        for pod in self._pods(dep):
            specs = {c.name: c for c in pod_spec(pod).containers}
            statuses = (pod.status.container_statuses if pod.status else None) or []
            containers = [_container_state(s, specs.get(s.name)) for s in statuses]
            result.append(
                PodState(
                    name=meta(pod).name,
                    phase=(pod.status.phase if pod.status else None) or "Unknown",
                    ready=bool(containers) and all(c.ready for c in containers),
                    node=pod_spec(pod).node_name,
                    created=as_datetime(meta(pod).creation_timestamp),
                    template_hash=(meta(pod).labels or {}).get(HASH_LABEL),
                    restarts=sum(c.restart_count for c in containers),
                    containers=containers,
                )
            )
        return result

    def events(self, name: str | None = None, *, warnings_only: bool = False) -> list[KubeEvent]:
        """Returns events about the deployment, its ReplicaSets and their pods, oldest first."""
        dep = self._deployment(self._name(name))
        prefixes = tuple(f"{meta(rs).name}" for rs in self._replicasets(dep))
        events = []
        for selector, keep in (
            (f"involvedObject.kind=Deployment,involvedObject.name={meta(dep).name}", None),
            ("involvedObject.kind=ReplicaSet", prefixes),
            ("involvedObject.kind=Pod", tuple(f"{p}-" for p in prefixes)),
        ):
            if keep == ():
                continue
            found = self._call(
                f"list events ({selector})",
                self._core().list_namespaced_event,
                self.target.namespace,
                field_selector=selector,
            )
            events += [
                e
                for e in found.items
                if keep is None or (e.involved_object.name or "").startswith(keep)
            ]
        result = [
            KubeEvent(
                type=e.type or "Normal",
                reason=e.reason or "",
                message=e.message or "",
                kind=e.involved_object.kind or "",
                name=e.involved_object.name or "",
                count=e.count or 1,
                last_seen=as_datetime(e.last_timestamp)
                or as_datetime(e.event_time)
                or as_datetime(meta(e).creation_timestamp),
            )
            for e in events
            if not warnings_only or e.type == "Warning"
        ]
        return sorted(result, key=lambda e: e.last_seen or datetime.min.replace(tzinfo=UTC))

    def logs(
        self, pod: str, *, container: str | None = None, tail: int = 200, previous: bool = False
    ) -> str:
        """Returns a container's last ``tail`` log lines (``previous``: of its last crashed run)."""
        return self._call(
            f"read logs of pod {pod}",
            self._core().read_namespaced_pod_log,
            pod,
            self.target.namespace,
            container=container or self.target.container,
            tail_lines=tail,
            previous=previous,
        )

    async def preflight(self) -> dict[str, bool | str]:
        """Checks each read capability, then whether the runbooks' writes are allowed.

        ``may_patch_deployment`` covers rollout restart, rollout undo and memory limits;
        ``may_scale_deployment`` the scale subresource. Both are SelfSubjectAccessReviews:
        questions, never writes. True or the error text for each.
        """
        dep = self.target.deployment
        probes: dict[str, Callable[[], Any]] = {
            "api": lambda: self._call("get version", k8s.VersionApi(self._client()).get_code),
            "read_deployment": lambda: self._deployment(dep),
            "list_pods": lambda: self._call(
                "list pods", self._core().list_namespaced_pod, self.target.namespace, limit=1
            ),
            "list_events": lambda: self._call(
                "list events", self._core().list_namespaced_event, self.target.namespace, limit=1
            ),
            "may_patch_deployment": lambda: self.may("patch", "deployments", name=dep),
            "may_scale_deployment": lambda: self.may("patch", "deployments", "scale", name=dep),
        }
        return await run_probes(probes)
