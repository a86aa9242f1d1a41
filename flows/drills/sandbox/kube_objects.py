"""Kubernetes object shapes, and the API's patch and selector rules, over plain JSON objects.

Object shapes follow the API reference (https://kubernetes.io/docs/reference/kubernetes-api/)
as ``kubectl get -o json`` prints them; :mod:`flows.drills.sandbox.kube_api` serves them.
"""

from __future__ import annotations

import copy
import json
import re
import string
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "CONDITIONS",
    "CRASHING",
    "DEPLOYMENT",
    "EVENT",
    "HASH_LABEL",
    "HISTORY",
    "KINDS",
    "OWNER",
    "POD",
    "REPLICASET",
    "REVISION",
    "RUNNING",
    "SAFE",
    "SCALE",
    "USER",
    "VERSION",
    "ApiFailure",
    "fields_match",
    "fill",
    "json_patch",
    "merge_patch",
    "revision_of",
    "same_template",
    "selector_matches",
    "strategic_merge",
    "ts",
]

REVISION = "deployment.kubernetes.io/revision"
HISTORY = "deployment.kubernetes.io/revision-history"
HASH_LABEL = "pod-template-hash"
USER = "system:serviceaccount:oncall:runbooks"
SAFE = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery/pkg/util/rand: no vowels, no 0/1/3
KINDS = {  # resource -> (API group, kind); core resources have group ""
    "deployments": ("apps", "Deployment"),
    "replicasets": ("apps", "ReplicaSet"),
    "pods": ("", "Pod"),
    "events": ("", "Event"),
    "secrets": ("", "Secret"),
}
# x-kubernetes-patch-merge-key of the lists we strategic-merge (OpenAPI spec of core/v1).
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "conditions": "type",
}

# Object shapes as `kubectl get -o json` prints them; "$x" is replaced by a value, ${x} inside text.
DEPLOYMENT = """{"apiVersion": "apps/v1", "kind": "Deployment",
 "metadata": {"name": "$name", "namespace": "$ns", "uid": "$uid", "generation": 1,
  "creationTimestamp": "$created", "labels": {"app": "$name"}, "annotations": {}},
 "spec": {"replicas": "$replicas", "selector": {"matchLabels": {"app": "$name"}},
  "template": {"metadata": {"labels": {"app": "$name"}}, "spec": {
   "containers": [{"name": "$container", "image": "$image", "imagePullPolicy": "IfNotPresent",
    "ports": [{"containerPort": 8080, "protocol": "TCP"}],
    "resources": {"limits": {"cpu": "500m", "memory": "$limit"},
                  "requests": {"cpu": "250m", "memory": "$request"}},
    "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"}],
   "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
   "schedulerName": "default-scheduler", "securityContext": {}}},
  "strategy": {"type": "RollingUpdate",
               "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
  "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600},
 "status": {}}"""
OWNER = """[{"apiVersion": "apps/v1", "kind": "$kind", "name": "$name", "uid": "$uid",
 "controller": true, "blockOwnerDeletion": true}]"""
REPLICASET = """{"apiVersion": "apps/v1", "kind": "ReplicaSet",
 "metadata": {"name": "$name", "namespace": "$ns", "uid": "$uid", "resourceVersion": "$rv",
  "generation": 1, "creationTimestamp": "$created", "labels": "$labels",
  "annotations": {"deployment.kubernetes.io/revision": "${revision}",
   "deployment.kubernetes.io/desired-replicas": "${replicas}",
   "deployment.kubernetes.io/max-replicas": "${max}"}, "ownerReferences": "$owner"},
 "spec": {"replicas": 0, "selector": {"matchLabels": "$labels"}, "template": "$template"},
 "status": {"replicas": 0, "observedGeneration": 1}}"""
POD = """{"apiVersion": "v1", "kind": "Pod",
 "metadata": {"name": "$name", "generateName": "${rs}-", "namespace": "$ns", "uid": "$uid",
  "resourceVersion": "$rv", "creationTimestamp": "$created", "labels": "$labels",
  "annotations": "$annotations", "ownerReferences": "$owner"},
 "spec": "$spec",
 "status": {"phase": "Running", "hostIP": "10.0.1.12", "podIP": "$ip", "startTime": "$created",
  "qosClass": "Burstable", "containerStatuses": "$statuses", "conditions": [
   {"type": "Initialized", "status": "True", "lastProbeTime": null,
    "lastTransitionTime": "$created"},
   {"type": "Ready", "status": "$ready", "lastProbeTime": null, "lastTransitionTime": "$created"},
   {"type": "ContainersReady", "status": "$ready", "lastProbeTime": null,
    "lastTransitionTime": "$created"},
   {"type": "PodScheduled", "status": "True", "lastProbeTime": null,
    "lastTransitionTime": "$created"}
 ]}}"""
RUNNING = """{"name": "$name", "image": "$image", "imageID": "$image_id", "containerID": "$cid",
 "ready": true, "started": true, "restartCount": 0, "lastState": {},
 "state": {"running": {"startedAt": "$started"}}}"""
CRASHING = """{"name": "$name", "image": "$image", "imageID": "$image_id", "containerID": "$cid",
 "ready": false, "started": false, "restartCount": 4,
 "state": {"waiting": {"reason": "CrashLoopBackOff",
  "message": "back-off 1m20s restarting failed container=${name} pod=${pod}_${ns}"}},
 "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "containerID": "$cid",
  "startedAt": "$started", "finishedAt": "$started"}}}"""
EVENT = """{"apiVersion": "v1", "kind": "Event",
 "metadata": {"name": "$name", "namespace": "$ns", "uid": "$uid", "resourceVersion": "$rv",
  "creationTimestamp": "$when"},
 "involvedObject": {"kind": "$kind", "namespace": "$ns", "name": "$object", "uid": "$object_uid",
  "apiVersion": "$api"},
 "reason": "$reason", "message": "$message", "type": "$type", "count": "$count",
 "source": {"component": "$component"}, "reportingComponent": "$component",
 "reportingInstance": "", "firstTimestamp": "$when", "lastTimestamp": "$when"}"""
CONDITIONS = """[
 {"type": "Available", "status": "$available", "reason": "$available_reason",
  "message": "$available_message", "lastUpdateTime": "$now", "lastTransitionTime": "$now"},
 {"type": "Progressing", "status": "$progressing", "reason": "$progress_reason",
  "message": "ReplicaSet \\"${rs}\\" ${progress}", "lastUpdateTime": "$now",
  "lastTransitionTime": "$now"}]"""
SCALE = """{"kind": "Scale", "apiVersion": "autoscaling/v1",
 "metadata": {"name": "$name", "namespace": "$ns", "uid": "$uid", "resourceVersion": "$rv",
  "creationTimestamp": "$created"},
 "spec": {"replicas": "$replicas"}, "status": {"replicas": "$current", "selector": "$selector"}}"""
VERSION = {
    "major": "1",
    "minor": "30",
    "gitVersion": "v1.30.2",
    "gitTreeState": "clean",
    "gitCommit": "39683505b630ff2121012f3c5b16215a1449d5ed",
    "compiler": "gc",
    "buildDate": "2024-06-11T20:21:00Z",
    "goVersion": "go1.22.4",
    "platform": "linux/amd64",
}


def fill(shape: str, /, **values: Any) -> Any:
    """Parses a JSON shape, putting ``values`` where it says "$name" (whole value) or ${name}."""

    def put(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: put(v) for k, v in node.items()}
        if isinstance(node, list):
            return [put(v) for v in node]
        if isinstance(node, str) and node.startswith("$") and node[1:] in values:
            return copy.deepcopy(values[node[1:]])
        if isinstance(node, str) and "${" in node:
            return string.Template(node).substitute(values)
        return node

    return put(json.loads(shape))


class ApiFailure(Exception):
    """An error answer: HTTP code, Status reason and message."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def ts(when: datetime) -> str:
    """Formats a time as the API does: UTC, whole seconds."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def strategic_merge(target: Any, patch: Any) -> Any:
    """Applies a strategic-merge patch: maps merge, ``null`` deletes, keyed lists merge by key."""
    if not isinstance(patch, dict) or not isinstance(target, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    out = copy.deepcopy(target)
    for key, value in patch.items():
        if key.startswith("$"):
            continue  # directives such as $setElementOrder only order lists
        if value is None:
            out.pop(key, None)
        elif key in _MERGE_KEYS and isinstance(value, list) and isinstance(out.get(key), list):
            merged, mkey = out[key], _MERGE_KEYS[key]
            for item in value:
                at = next((i for i, c in enumerate(merged) if c.get(mkey) == item.get(mkey)), None)
                if item.get("$patch") == "delete":
                    merged = [c for c in merged if c.get(mkey) != item.get(mkey)]
                elif at is None:
                    merged.append(strategic_merge({}, item))
                else:
                    merged[at] = strategic_merge(merged[at], item)
            out[key] = merged
        else:
            out[key] = strategic_merge(out.get(key, {}), value)
    return out


def merge_patch(target: Any, patch: Any) -> Any:
    """Applies an RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """Applies an RFC 6902 JSON patch (add, remove, replace, test); ValueError when one fails."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        try:
            parent = doc
            for part in parts[:-1]:
                parent = parent[int(part)] if isinstance(parent, list) else parent[part]
            last: Any = (
                int(parts[-1]) if isinstance(parent, list) and parts[-1] != "-" else parts[-1]
            )
            kind = op["op"]
            if kind == "test" and parent[last] != op["value"]:
                raise ValueError(f"testing value {op['path']} failed")
            if kind in ("remove", "replace"):
                del parent[last]  # replace needs an existing member (RFC 6902 4.3): remove, add
            if kind in ("add", "replace") and isinstance(parent, list):
                parent.insert(len(parent) if last == "-" else last, copy.deepcopy(op["value"]))
            elif kind in ("add", "replace"):
                parent[last] = copy.deepcopy(op["value"])
            elif kind not in ("test", "remove"):
                raise ValueError(f"unsupported JSON patch operation {kind!r}")
        except (KeyError, IndexError, TypeError) as exc:
            raise ValueError(f"{op.get('op')} {op.get('path')}: path not found") from exc
    return doc


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Tells whether labels match an equality- or set-based label selector."""
    # The grammar of apimachinery/pkg/labels.Parse.
    for term in filter(None, (t.strip() for t in re.split(r",(?![^(]*\))", selector))):
        if m := re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", term):
            values = {v.strip() for v in m.group(3).split(",")}
            if (labels.get(m.group(1)) in values) != (m.group(2) == "in"):
                return False
        elif m := re.fullmatch(r"([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)", term):
            if (labels.get(m.group(1)) == m.group(3)) != (m.group(2) != "!="):
                return False
        elif (term[0] == "!") == (term.lstrip("!") in labels):
            return False
    return True


def fields_match(selector: str, obj: dict[str, Any]) -> bool:
    """Tells whether an object matches a field selector; ApiFailure 400 when it is malformed."""
    for term in filter(None, selector.split(",")):
        if not (m := re.fullmatch(r"([\w.]+)(==|=|!=)(.*)", term.strip())):
            raise ApiFailure(400, "BadRequest", f"invalid field selector: {term!r}")
        value: Any = obj
        for part in m[1].split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if (str(value if value is not None else "") == m[3]) != (m[2] != "!="):
            return False
    return True


def same_template(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Compares pod templates as kubectl does, ignoring the pod-template-hash label."""
    # kubectl's equalIgnoreHash.
    a, b = copy.deepcopy(a), copy.deepcopy(b)
    for t in (a, b):
        t.setdefault("metadata", {}).setdefault("labels", {}).pop(HASH_LABEL, None)
    return a == b


def revision_of(obj: dict[str, Any]) -> int:
    """Returns an object's ``deployment.kubernetes.io/revision``; 0 when unset."""
    return int(obj["metadata"].get("annotations", {}).get(REVISION, "0"))
