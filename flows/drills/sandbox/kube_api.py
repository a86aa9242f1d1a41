"""A small local Kubernetes API server that the real ``kubernetes`` client talks to.

Used by the tests and by drills. It serves what our integration uses: apps/v1 deployments
(get, list, patch, replace, the ``scale`` subresource), replicasets, core/v1 pods (and their
logs), events, secrets, ``/version`` and SelfSubjectAccessReviews. State is in memory; object
shapes follow the API reference (https://kubernetes.io/docs/reference/kubernetes-api/).
A change of a deployment's pod template runs the deployment controller at once, as
pkg/controller/deployment does: the ReplicaSet with that template is reused or created with
the next ``deployment.kubernetes.io/revision``, older ones go to 0 and pods are replaced.
Rollouts complete instantly. Every request is recorded for tests to assert on.

The stored objects and the controller are in :mod:`flows.drills.sandbox.kube_cluster`, the object
shapes and patch and selector rules in :mod:`flows.drills.sandbox.kube_objects`.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel

from flows.drills.sandbox.kube_cluster import KubeCluster
from flows.drills.sandbox.kube_objects import (
    KINDS,
    SCALE,
    USER,
    VERSION,
    ApiFailure,
    fields_match,
    fill,
    json_patch,
    merge_patch,
    selector_matches,
    strategic_merge,
)
from flows.drills.sandbox.loopback import LoopbackServer, Served

__all__ = ["KubeApiServer", "RecordedRequest", "json_patch", "merge_patch", "strategic_merge"]

_SSAR = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"

_ROUTE = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[\w.]+)/v1)/namespaces/(?P<ns>[^/]+)/(?P<resource>[a-z]+)"
    r"(?:/(?P<name>[^/]+))?(?:/(?P<sub>scale|log))?$"
)


class RecordedRequest(BaseModel):
    """One request the server received."""

    method: str
    path: str
    query: dict[str, str]
    body: Any = None
    content_type: str | None = None
    authenticated: bool = False


class KubeApiServer(KubeCluster, Served):
    """An in-memory Kubernetes API on 127.0.0.1 and a free port; use as a context manager.

    ``token`` makes every request need ``Authorization: Bearer <token>`` (else 401);
    ``forbid(verb, resource[, namespace])`` makes RBAC refuse a verb (403), and
    SelfSubjectAccessReviews answer the same question the same way; ``crashing_images`` lists
    images whose pods crash-loop; ``fail_next`` makes the next matching request fail.
    """

    def __init__(self, *, token: str | None = None, namespace: str = "default") -> None:
        super().__init__(namespace)
        self.token = token
        self.requests: list[RecordedRequest] = []
        self._forbidden: set[tuple[str, str, str | None]] = set()
        self._failures: list[list[Any]] = []
        self._server = LoopbackServer(
            self.handle, methods=("GET", "POST", "PUT", "PATCH", "DELETE")
        )

    def writes(self) -> list[RecordedRequest]:
        """The recorded requests that could change state (anything but GET)."""
        return [r for r in self.requests if r.method != "GET"]

    def forbid(self, verb: str, resource: str, namespace: str | None = None) -> None:
        """Makes RBAC refuse ``verb`` (get, list, patch, update, create) on ``resource``
        (``deployments``, ``deployments/scale`` …), in ``namespace`` or in every one."""
        self._forbidden.add((verb, resource, namespace))

    def _allowed(self, verb: str, resource: str, namespace: str | None) -> bool:
        return not {(verb, resource, None), (verb, resource, namespace)} & self._forbidden

    def fail_next(self, method: str, path_part: str, code: int = 500, times: int = 1) -> None:
        """Makes the next ``times`` requests whose path contains ``path_part`` answer ``code``."""
        self._failures.append([method.upper(), path_part, code, times])

    # -- request handling ------------------------------------------------------------------
    def handle(
        self, method: str, raw_path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, Any]:
        """Answers one request: (status code, JSON-able body or log text)."""
        parts = urlsplit(raw_path)
        query = dict(parse_qsl(parts.query))
        headers = {k.lower(): v for k, v in headers.items()}
        ctype = (headers.get("content-type") or "").split(";")[0] or None
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        authenticated = self.token is None or headers.get("authorization") == f"Bearer {self.token}"
        with self._lock:
            self.requests.append(
                RecordedRequest(
                    method=method,
                    path=parts.path,
                    query=query,
                    body=body,
                    content_type=ctype,
                    authenticated=authenticated,
                )
            )
            try:
                if not authenticated:
                    raise ApiFailure(401, "Unauthorized", "Unauthorized")
                for failure in self._failures:
                    if failure[3] > 0 and failure[0] == method and failure[1] in parts.path:
                        failure[3] -= 1
                        raise ApiFailure(
                            failure[2], "InternalError", "Internal error occurred: injected failure"
                        )
                if parts.path == _SSAR:
                    if method != "POST":
                        raise ApiFailure(
                            405,
                            "MethodNotAllowed",
                            "the server does not allow this method on the requested resource",
                        )
                    return 201, self._access_review(body)  # a create answers 201 Created
                return 200, self._route(method, parts.path, query, ctype, body)
            except ApiFailure as fail:
                return fail.code, {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": fail.message,
                    "reason": fail.reason,
                    "code": fail.code,
                }

    def _route(
        self, method: str, path: str, query: dict[str, str], ctype: str | None, body: Any
    ) -> Any:
        if path.rstrip("/") == "/version":
            return VERSION
        m = _ROUTE.match(path)
        if not m or m["resource"] not in KINDS or (m["group"] or "") != KINDS[m["resource"]][0]:
            raise ApiFailure(404, "NotFound", "the server could not find the requested resource")
        resource, ns, name, sub = m["resource"], m["ns"], m["name"], m["sub"]
        group, kind = KINDS[resource]
        qualified = f"{resource}.{group}" if group else resource
        verb = {"GET": "get" if name else "list", "PATCH": "patch", "PUT": "update"}.get(
            method, "create"
        )
        rbac = "/".join(filter(None, (resource, sub)))
        if not self._allowed(verb, rbac, ns):
            raise ApiFailure(
                403,
                "Forbidden",
                f'{qualified} "{name or ""}" is forbidden: User "{USER}" cannot {verb} '
                f'resource "{rbac}" in API group "{group}" in the namespace "{ns}"',
            )
        not_allowed = ApiFailure(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
        if not name:
            if method != "GET":
                raise not_allowed
            items = [
                o
                for o in self._in(resource, ns)
                if fields_match(query.get("fieldSelector", ""), o)
                and selector_matches(
                    query.get("labelSelector", ""), o["metadata"].get("labels", {})
                )
            ]
            return {
                "apiVersion": "apps/v1" if group else "v1",
                "kind": f"{kind}List",
                "metadata": {"resourceVersion": str(self._rv)},
                "items": copy.deepcopy(items),
            }
        obj = self._objects[resource].get((ns, name))
        if obj is None:
            raise ApiFailure(404, "NotFound", f'{qualified} "{name}" not found')
        if sub == "log":
            return self._log(obj, query)
        if sub == "scale":
            return self._scale(obj, method, ctype, body)
        if method == "GET":
            return copy.deepcopy(obj)
        if resource not in ("deployments", "secrets") or method not in ("PATCH", "PUT"):
            raise not_allowed
        return self._store(
            resource, obj, self._apply(obj, method, ctype, body, f'{qualified} "{name}"')
        )

    def _access_review(self, body: Any) -> dict[str, Any]:
        """Answers a SelfSubjectAccessReview as kube-apiserver does with RBAC.

        The spec is validated like ValidateSelfSubjectAccessReviewSpec (exactly one of
        resourceAttributes or nonResourceAttributes, else 422). An allowed request says
        which binding allows it; RBAC never denies, it only fails to allow, so a refusal
        is ``allowed: false`` with no reason and no ``denied``.
        """
        spec = (body or {}).get("spec") if isinstance(body, dict) else None
        spec = spec if isinstance(spec, dict) else {}
        attrs, non_resource = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
        if (attrs is None) == (non_resource is None):
            raise ApiFailure(
                422,
                "Invalid",
                'SelfSubjectAccessReview.authorization.k8s.io "" is invalid: spec: Invalid'
                " value: null: exactly one of nonResourceAttributes or resourceAttributes"
                " must be specified",
            )
        if isinstance(attrs, dict):
            resource = "/".join(filter(None, (attrs.get("resource"), attrs.get("subresource"))))
            allowed = self._allowed(attrs.get("verb", ""), resource, attrs.get("namespace"))
        else:  # system:discovery lets everyone read the discovery paths, nothing else
            asked = non_resource if isinstance(non_resource, dict) else {}
            allowed = asked.get("verb") == "get" and asked.get("path") in (
                "/version",
                "/healthz",
                "/livez",
                "/readyz",
                "/api",
                "/apis",
            )
        service_account = USER.removeprefix("system:serviceaccount:").split(":")
        status: dict[str, Any] = {"allowed": allowed}
        if allowed:
            status["reason"] = (
                'RBAC: allowed by ClusterRoleBinding "oncall-runbooks" of ClusterRole'
                f' "oncall-runbooks" to ServiceAccount "{service_account[1]}/{service_account[0]}"'
            )
        return {
            "kind": "SelfSubjectAccessReview",
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": status,
        }

    def _apply(
        self, obj: dict[str, Any], method: str, ctype: str | None, body: Any, what: str
    ) -> dict[str, Any]:
        if method == "PUT":
            if body.get("metadata", {}).get("resourceVersion") not in (
                None,
                obj["metadata"].get("resourceVersion"),
            ):
                raise ApiFailure(
                    409,
                    "Conflict",
                    f"Operation cannot be fulfilled on {what}: the object has been "
                    "modified; please apply your changes to the latest version and try again",
                )
            return {**copy.deepcopy(body), "status": copy.deepcopy(obj.get("status", {}))}
        patchers = {
            "application/json-patch+json": json_patch,
            "application/merge-patch+json": merge_patch,
            "application/strategic-merge-patch+json": strategic_merge,
        }
        if ctype not in patchers:
            raise ApiFailure(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - "
                f"accepted media types include: {', '.join(patchers)} (got {ctype})",
            )
        if (ctype == "application/json-patch+json") != isinstance(body, list):
            raise ApiFailure(400, "BadRequest", f"the patch body does not fit {ctype}")
        try:
            return patchers[ctype](obj, body)
        except ValueError as exc:
            raise ApiFailure(422, "Invalid", f"{what} is invalid: {exc}") from exc

    def _scale(
        self, dep: dict[str, Any], method: str, ctype: str | None, body: Any
    ) -> dict[str, Any]:
        # autoscaling/v1 Scale, the view the deployments/scale subresource gives of a deployment.
        def view(d: dict[str, Any]) -> dict[str, Any]:
            meta, labels = d["metadata"], d["spec"]["selector"]["matchLabels"]
            return fill(
                SCALE,
                name=meta["name"],
                ns=meta["namespace"],
                uid=meta["uid"],
                rv=meta["resourceVersion"],
                created=meta["creationTimestamp"],
                replicas=d["spec"]["replicas"],
                current=d["status"].get("replicas", 0),
                selector=",".join(f"{k}={v}" for k, v in labels.items()),
            )

        if method == "GET":
            return view(dep)
        patched = body if method == "PUT" else self._apply(view(dep), method, ctype, body, "scale")
        updated = copy.deepcopy(dep)
        updated["spec"]["replicas"] = (patched.get("spec") or {}).get("replicas")
        return view(self._store("deployments", dep, updated))

    def _log(self, pod: dict[str, Any], query: dict[str, str]) -> str:
        meta, names = pod["metadata"], [c["name"] for c in pod["spec"]["containers"]]
        container = query.get("container") or (names[0] if len(names) == 1 else None)
        if container not in names:
            raise ApiFailure(
                400,
                "BadRequest",
                f"a container name must be specified for pod {meta['name']}, "
                f"choose one of: [{' '.join(names)}]",
            )
        key = (meta["namespace"], meta["name"], container, query.get("previous") in ("true", "1"))
        if key not in self._logs:
            raise ApiFailure(
                400,
                "BadRequest",
                f'previous terminated container "{container}" in pod "{meta["name"]}" not found',
            )
        lines = self._logs[key]
        tail = int(query["tailLines"]) if query.get("tailLines") else len(lines)
        return "".join(f"{line}\n" for line in lines[len(lines) - tail :] if tail)
