"""The sandbox Kubernetes API's stored objects and its deployment controller.

State is in memory. A change of a deployment's pod template runs the deployment controller at
once, as pkg/controller/deployment does: the ReplicaSet with that template is reused or
created with the next ``deployment.kubernetes.io/revision``, older ones go to 0 and pods are
replaced. Rollouts complete instantly.
:class:`flows.drills.sandbox.kube_api.KubeApiServer` serves it.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import random
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from flows.drills.sandbox.kube_objects import (
    CONDITIONS,
    CRASHING,
    DEPLOYMENT,
    EVENT,
    HASH_LABEL,
    HISTORY,
    KINDS,
    OWNER,
    POD,
    REPLICASET,
    REVISION,
    RUNNING,
    SAFE,
    ApiFailure,
    fill,
    revision_of,
    same_template,
    ts,
)

__all__ = ["KubeCluster"]


class KubeCluster:
    """Deployments, ReplicaSets, pods, events and secrets in memory, kept as the controller would.

    ``crashing_images`` lists images whose pods crash-loop.
    """

    def __init__(self, namespace: str = "default") -> None:
        self.namespace = namespace
        self.crashing_images: set[str] = set()
        self._objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {k: {} for k in KINDS}
        self._logs: dict[tuple[str, str, str, bool], list[str]] = {}
        self._rv = 1000
        self._random = random.Random(7)  # deterministic names across runs
        self._lock = threading.RLock()

    # -- inspection and seeding ------------------------------------------------------------
    def get(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        """A copy of one stored object (KeyError if absent)."""
        with self._lock:
            return copy.deepcopy(self._objects[resource][(namespace or self.namespace, name)])

    def objects(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Copies of the stored objects of one resource in a namespace, oldest first."""
        with self._lock:
            return copy.deepcopy(self._in(resource, namespace or self.namespace))

    def seed_deployment(
        self,
        name: str,
        images: list[str],
        *,
        replicas: int = 3,
        namespace: str | None = None,
        container: str = "app",
        memory_limit: str = "256Mi",
        memory_request: str = "128Mi",
        deployed_ago: timedelta = timedelta(minutes=20),
    ) -> dict[str, Any]:
        """Creates a deployment that went through one revision per image (oldest first)."""
        ns, now = namespace or self.namespace, datetime.now(UTC)
        start = now - deployed_ago - timedelta(days=2 * (len(images) - 1))
        dep = fill(
            DEPLOYMENT,
            name=name,
            ns=ns,
            uid=self._uid(),
            created=ts(start),
            replicas=replicas,
            container=container,
            image=images[0],
            limit=memory_limit,
            request=memory_request,
        )
        with self._lock:
            self._objects["deployments"][(ns, name)] = dep
            for i, image in enumerate(images):
                dep["spec"]["template"]["spec"]["containers"][0]["image"] = image
                dep["metadata"]["generation"] = i + 1
                last = i == len(images) - 1
                self._reconcile(dep, now - deployed_ago if last else start + timedelta(days=2 * i))
            return copy.deepcopy(dep)

    def seed_oom_kills(
        self, deployment: str, restarts: int = 3, namespace: str | None = None
    ) -> list[str]:
        """Gives every current pod of ``deployment`` an OOMKilled history; returns pod names."""
        ns, now = namespace or self.namespace, datetime.now(UTC)
        finished = now - timedelta(minutes=2)
        with self._lock:
            pods = self._pods_of(self._objects["deployments"][(ns, deployment)])
            for pod in pods:
                status, name = pod["status"]["containerStatuses"][0], pod["metadata"]["name"]
                status["restartCount"] = restarts
                status["state"] = {"running": {"startedAt": ts(finished + timedelta(seconds=8))}}
                status["lastState"] = {
                    "terminated": {
                        "exitCode": 137,
                        "reason": "OOMKilled",
                        "containerID": status["containerID"],
                        "startedAt": ts(finished - timedelta(minutes=9)),
                        "finishedAt": ts(finished),
                    }
                }
                message = (
                    f"Back-off restarting failed container {status['name']} in pod "
                    f"{name}_{ns}({pod['metadata']['uid']})"
                )
                self._event(pod, "Warning", "BackOff", message, now, restarts, "kubelet")
                self._logs[(ns, name, status["name"], True)] = [
                    "INFO  request served in 41ms",
                    "WARN  heap usage at 97% of limit",
                    "ERROR java.lang.OutOfMemoryError: Java heap space",
                ]
            return [p["metadata"]["name"] for p in pods]

    def seed_secret(self, name: str, data: dict[str, str], namespace: str | None = None) -> None:
        """Stores an Opaque secret (values given in clear, stored base64 as the API does)."""
        ns = namespace or self.namespace
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        meta = {
            "name": name,
            "namespace": ns,
            "uid": self._uid(),
            "resourceVersion": self._next_rv(),
            "creationTimestamp": ts(datetime.now(UTC)),
        }
        with self._lock:
            self._objects["secrets"][(ns, name)] = {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": meta,
                "data": encoded,
            }

    def set_logs(
        self,
        pod: str,
        lines: list[str],
        *,
        container: str = "app",
        previous: bool = False,
        namespace: str | None = None,
    ) -> None:
        """Sets the log lines a pod's container (or its previous instance) returns."""
        self._logs[(namespace or self.namespace, pod, container, previous)] = list(lines)

    # -- the deployment controller ---------------------------------------------------------
    def _uid(self) -> str:
        return str(uuid.UUID(int=self._random.getrandbits(128), version=4))

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _in(self, resource: str, ns: str) -> list[dict[str, Any]]:
        return [o for (n, _), o in self._objects[resource].items() if n == ns]

    def _owned(self, owner: dict[str, Any], resource: str, uids: set[str]) -> list[dict[str, Any]]:
        return [
            o
            for o in self._in(resource, owner["metadata"]["namespace"])
            if any(r.get("uid") in uids for r in o["metadata"].get("ownerReferences", []))
        ]

    def _pods_of(self, dep: dict[str, Any]) -> list[dict[str, Any]]:
        sets = self._owned(dep, "replicasets", {dep["metadata"]["uid"]})
        return self._owned(dep, "pods", {rs["metadata"]["uid"] for rs in sets})

    def _event(
        self,
        obj: dict[str, Any],
        type_: str,
        reason: str,
        message: str,
        when: datetime,
        count: int = 1,
        component: str = "deployment-controller",
    ) -> None:
        meta = obj["metadata"]
        name = f"{meta['name']}.{self._random.getrandbits(64):016x}"
        self._objects["events"][(meta["namespace"], name)] = fill(
            EVENT,
            name=name,
            ns=meta["namespace"],
            uid=self._uid(),
            rv=self._next_rv(),
            when=ts(when),
            kind=obj["kind"],
            object=meta["name"],
            object_uid=meta["uid"],
            api=obj["apiVersion"],
            reason=reason,
            message=message,
            type=type_,
            count=count,
            component=component,
        )

    def _reconcile(self, dep: dict[str, Any], now: datetime) -> None:
        meta, spec = dep["metadata"], dep["spec"]
        owned = self._owned(dep, "replicasets", {meta["uid"]})
        top = max((revision_of(rs) for rs in owned), default=0)
        current = next(
            (rs for rs in owned if same_template(rs["spec"]["template"], spec["template"])), None
        )
        if current is None:
            current = self._new_replicaset(dep, top + 1, now)
            owned.append(current)
        elif revision_of(current) != top:  # an older template comes back as the newest revision
            notes = current["metadata"]["annotations"]
            notes[HISTORY] = ",".join(filter(None, [notes.get(HISTORY), notes[REVISION]]))
            notes[REVISION] = str(top + 1)
        for rs in owned:
            want, had = (spec["replicas"] if rs is current else 0), rs["spec"]["replicas"]
            if want != had:
                way = "up" if want > had else "down"
                message = f"Scaled {way} replica set {rs['metadata']['name']} from {had} to {want}"
                self._event(dep, "Normal", "ScalingReplicaSet", message, now)
                rs["spec"]["replicas"] = want
            self._sync_pods(rs, now)
        stale = sorted(
            (rs for rs in owned if rs is not current and not rs["spec"]["replicas"]),
            key=revision_of,
        )
        for rs in stale[: max(0, len(stale) - spec.get("revisionHistoryLimit", 10))]:
            del self._objects["replicasets"][(meta["namespace"], rs["metadata"]["name"])]
        meta.setdefault("annotations", {})[REVISION] = current["metadata"]["annotations"][REVISION]
        meta["resourceVersion"] = self._next_rv()
        self._set_status(dep, current, now)

    def _new_replicaset(self, dep: dict[str, Any], revision: int, now: datetime) -> dict[str, Any]:
        meta, replicas = dep["metadata"], dep["spec"]["replicas"]
        digest = hashlib.sha256(
            json.dumps(dep["spec"]["template"], sort_keys=True).encode()
        ).digest()
        hash_ = "".join(SAFE[b % len(SAFE)] for b in digest[:10])
        template = copy.deepcopy(dep["spec"]["template"])
        template["metadata"].setdefault("labels", {})[HASH_LABEL] = hash_
        owner = fill(OWNER, kind="Deployment", name=meta["name"], uid=meta["uid"])
        rs = fill(
            REPLICASET,
            name=f"{meta['name']}-{hash_}",
            ns=meta["namespace"],
            uid=self._uid(),
            rv=self._next_rv(),
            created=ts(now),
            labels=template["metadata"]["labels"],
            revision=revision,
            replicas=replicas,
            max=replicas + 1,
            owner=owner,
            template=template,
        )
        self._objects["replicasets"][(meta["namespace"], rs["metadata"]["name"])] = rs
        return rs

    def _sync_pods(self, rs: dict[str, Any], now: datetime) -> None:
        want, pods = rs["spec"]["replicas"], self._owned(rs, "pods", {rs["metadata"]["uid"]})
        for pod in pods[want:]:
            message = f"Stopping container {pod['spec']['containers'][0]['name']}"
            self._event(pod, "Normal", "Killing", message, now, 1, "kubelet")
            del self._objects["pods"][(pod["metadata"]["namespace"], pod["metadata"]["name"])]
        pods = pods[:want] + [self._new_pod(rs, now) for _ in range(want - len(pods))]
        ready = sum(all(c["ready"] for c in p["status"]["containerStatuses"]) for p in pods)
        rs["status"] = {
            "replicas": want,
            "fullyLabeledReplicas": want,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "observedGeneration": 1,
        }

    def _new_pod(self, rs: dict[str, Any], now: datetime) -> dict[str, Any]:
        ns, template, rs_name = (
            rs["metadata"]["namespace"],
            rs["spec"]["template"],
            rs["metadata"]["name"],
        )
        name = f"{rs_name}-{''.join(self._random.choice(SAFE) for _ in range(5))}"
        statuses = []
        for c in template["spec"]["containers"]:
            crashing = c["image"] in self.crashing_images
            digest = hashlib.sha256(c["image"].encode()).hexdigest()
            statuses.append(
                fill(
                    CRASHING if crashing else RUNNING,
                    name=c["name"],
                    image=c["image"],
                    pod=name,
                    ns=ns,
                    image_id=f"{c['image'].split(':')[0]}@sha256:{digest}",
                    started=ts(now),
                    cid=f"containerd://{self._random.getrandbits(256):064x}",
                )
            )
            fatal = ["FATAL config: missing required setting DATABASE_URL"] if crashing else []
            self._logs[(ns, name, c["name"], False)] = [
                f"INFO  starting {c['image']}",
                "INFO  listening on :8080",
                *fatal,
            ]
        spec = {
            **copy.deepcopy(template["spec"]),
            "serviceAccountName": "default",
            "nodeName": f"node-{self._random.randint(1, 3)}",
        }
        pod = fill(
            POD,
            name=name,
            rs=rs_name,
            ns=ns,
            uid=self._uid(),
            rv=self._next_rv(),
            created=ts(now),
            labels=template["metadata"]["labels"],
            annotations=template["metadata"].get("annotations", {}),
            spec=spec,
            owner=fill(OWNER, kind="ReplicaSet", name=rs_name, uid=rs["metadata"]["uid"]),
            ip=f"10.244.{self._random.randint(0, 3)}.{self._random.randint(2, 250)}",
            statuses=statuses,
            ready=str(all(s["ready"] for s in statuses)),
        )
        self._objects["pods"][(ns, name)] = pod
        message = f"Successfully assigned {ns}/{name} to {spec['nodeName']}"
        self._event(pod, "Normal", "Scheduled", message, now, 1, "default-scheduler")
        return pod

    def _set_status(self, dep: dict[str, Any], current: dict[str, Any], now: datetime) -> None:
        want, ready = dep["spec"]["replicas"], current["status"]["readyReplicas"]
        available, done = (
            ready >= want - want // 4,
            ready == want,
        )  # maxUnavailable 25%, rounded down
        dep["status"] = {
            "observedGeneration": dep["metadata"]["generation"],
            "replicas": want,
            "updatedReplicas": want,
            "readyReplicas": ready,
            "availableReplicas": ready,
            **({"unavailableReplicas": want - ready} if want > ready else {}),
            "conditions": fill(
                CONDITIONS,
                now=ts(now),
                rs=current["metadata"]["name"],
                available=str(available),
                available_reason="MinimumReplicasAvailable"
                if available
                else "MinimumReplicasUnavailable",
                available_message=f"Deployment {'has' if available else 'does not have'} "
                "minimum availability.",
                progressing=str(done),
                progress_reason="NewReplicaSetAvailable" if done else "ProgressDeadlineExceeded",
                progress="has successfully progressed." if done else "has timed out progressing.",
            ),
        }

    def _store(self, resource: str, obj: dict[str, Any], updated: dict[str, Any]) -> dict[str, Any]:
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        for key in ("name", "namespace", "uid", "creationTimestamp"):  # immutable metadata
            updated.setdefault("metadata", {})[key] = obj["metadata"][key]
        if resource == "secrets":
            strings = updated.pop("stringData", None) or {}  # write-only, stored base64 in data
            updated.setdefault("data", {}).update(
                {k: base64.b64encode(v.encode()).decode() for k, v in strings.items()}
            )
            updated["metadata"]["resourceVersion"] = self._next_rv()
            self._objects["secrets"][(ns, name)] = updated
            return copy.deepcopy(updated)
        self._validate(updated)
        changed = updated["spec"] != obj["spec"]
        updated["metadata"]["generation"] = obj["metadata"]["generation"] + changed
        self._objects["deployments"][(ns, name)] = updated
        self._reconcile(updated, datetime.now(UTC))
        return copy.deepcopy(updated)

    def _validate(self, dep: dict[str, Any]) -> None:
        causes, replicas = [], dep["spec"].get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            causes.append(
                f"spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0"
            )
        for i, c in enumerate(dep["spec"]["template"]["spec"].get("containers", [])):
            res, field = c.get("resources", {}), f"spec.template.spec.containers[{i}].resources"
            for kind, key, value in [
                (k, n, v) for k in ("limits", "requests") for n, v in res.get(k, {}).items()
            ]:
                try:
                    parse_quantity(value)
                except ValueError:
                    causes.append(
                        f'{field}.{kind}[{key}]: Invalid value: "{value}": quantities must match '
                        "the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
                    )
            limit, request = (
                res.get("limits", {}).get("memory"),
                res.get("requests", {}).get("memory"),
            )
            if not causes and limit and request and parse_quantity(request) > parse_quantity(limit):
                causes.append(
                    f'{field}.requests: Invalid value: "{request}": must be less than or equal '
                    f"to memory limit of {limit}"
                )
        if causes:
            raise ApiFailure(
                422,
                "Invalid",
                f'Deployment.apps "{dep["metadata"]["name"]}" is invalid: {", ".join(causes)}',
            )
