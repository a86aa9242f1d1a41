"""The connection and the reads both Kubernetes clients share, and the error translation."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from kubernetes.config import load_kube_config
from kubernetes.config.config_exception import ConfigException

from integrations._kube_models import REVISION, KubernetesTarget
from integrations._sync_client import SyncSession
from integrations.errors import (
    ConfigError,
    OncallError,
    ProviderError,
    Timeout,
    Unreachable,
    error_for_status,
)
from integrations.preflight import Shortfall

__all__ = [
    "KubeSession",
    "annotations_of",
    "as_datetime",
    "aware_utc",
    "container_resources",
    "meta",
    "pod_spec",
    "rs_revision",
    "rs_template",
    "template_images",
    "translate_error",
]

T = TypeVar("T")


def _status_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "")["message"])
    except (ValueError, KeyError, TypeError):
        return str(exc.reason or "no detail").splitlines()[0]


def translate_error(exc: BaseException, target: str, what: str) -> OncallError:
    """Maps a kubernetes-client, urllib3 or kubeconfig error to the most specific of our tree."""
    prefix = f"{target}: {what}"
    if isinstance(exc, ApiException):
        code, detail = exc.status or 0, _status_message(exc)
        message = f"{prefix}: HTTP {code}: {detail}" if code else f"{prefix}: {detail}"
        if code == 0:
            kind = Unreachable if "SSL" in str(exc.reason) else ProviderError
            return kind(message, target=target)
        retry = (exc.headers or {}).get("Retry-After") if code == 429 else None
        return error_for_status(
            code, message, target=target, retry_after=float(retry) if retry else None
        )
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return Timeout(f"{prefix}: no answer in time", target=target)
    if isinstance(
        exc, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError
    ):
        return Unreachable(f"{prefix}: cannot connect ({type(exc).__name__})", target=target)
    if isinstance(exc, urllib3.exceptions.SSLError):
        return Unreachable(f"{prefix}: TLS handshake failed ({exc})", target=target)
    if isinstance(exc, ConfigException | OSError):
        return ConfigError(f"{prefix}: cannot load kubeconfig: {exc}")
    return ProviderError(f"{prefix}: {type(exc).__name__}: {exc}", target=target)


def aware_utc(when: datetime) -> datetime:
    """Returns ``when`` with UTC as its zone when it has none."""
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def as_datetime(value: Any) -> datetime | None:
    """Returns the value when the client parsed it into a datetime, else None."""
    return value if isinstance(value, datetime) else None


class KubeSession(SyncSession[k8s.ApiClient]):
    """Connection handling and the reads both classes need."""

    def __init__(
        self, target: KubernetesTarget, *, api_client: k8s.ApiClient | None = None
    ) -> None:
        super().__init__(target, api_client)

    def _client(self) -> k8s.ApiClient:
        return self._sdk()

    def _open(self) -> k8s.ApiClient:
        t = self.target
        if t.api_url:
            cfg = k8s.Configuration(host=t.api_url.rstrip("/"))
            if t.token is not None:
                cfg.api_key = {"BearerToken": t.token.get_secret_value()}
                cfg.api_key_prefix = {"BearerToken": "Bearer"}
            cfg.verify_ssl, cfg.ssl_ca_cert = t.verify_ssl, t.ca_cert
        else:
            cfg = k8s.Configuration()
            try:
                load_kube_config(t.kubeconfig, t.context, client_configuration=cfg)
            except (ConfigException, OSError) as exc:
                raise translate_error(exc, t.label, "load kubeconfig") from exc
        # Connection failures are retried twice (nothing was sent); answers never are.
        cfg.retries = urllib3.Retry(
            total=2, connect=2, read=0, status=0, other=0, backoff_factor=0.1
        )
        return k8s.ApiClient(cfg)

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, _request_timeout=self.target.timeout, **kwargs)
        except (ApiException, urllib3.exceptions.HTTPError, ValueError) as exc:
            raise translate_error(exc, self.target.label, what) from exc

    def may(self, verb: str, resource: str, subresource: str = "", name: str = "") -> bool | str:
        """Asks the API server whether we may ``verb`` the resource (SelfSubjectAccessReview).

        The same question as ``kubectl auth can-i``; it changes nothing, and any
        authenticated user may ask it. True, or a Shortfall saying what is not allowed.
        """
        group = "" if resource in ("secrets", "pods", "events") else "apps"
        review = k8s.V1SelfSubjectAccessReview(
            spec=k8s.V1SelfSubjectAccessReviewSpec(
                resource_attributes=k8s.V1ResourceAttributes(
                    namespace=self.target.namespace,
                    verb=verb,
                    group=group,
                    resource=resource,
                    subresource=subresource or None,
                    name=name or None,
                )
            )
        )
        answer = self._call(
            "review access",
            k8s.AuthorizationV1Api(self._client()).create_self_subject_access_review,
            review,
        )
        status = answer.status
        if status is not None and status.allowed:
            return True
        what = "/".join(filter(None, (resource, subresource)))
        # RBAC never denies, it only fails to allow: the reason is usually empty then.
        told = status and (status.reason or status.evaluation_error)
        why = told or "no RBAC rule allows it"
        return Shortfall(
            f"{self.target.label}: not allowed to {verb} {what}"
            f"{f' {name}' if name else ''} in namespace {self.target.namespace} ({why})",
            "denied",
        )

    def _apps(self) -> k8s.AppsV1Api:
        return k8s.AppsV1Api(self._client())

    def _core(self) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(self._client())

    def _name(self, deployment: str | None) -> str:
        return deployment or self.target.deployment

    def _deployment(self, name: str) -> k8s.V1Deployment:
        ns = self.target.namespace
        return self._call(
            f"read deployment {name}", self._apps().read_namespaced_deployment, name, ns
        )

    def _replicasets(self, dep: k8s.V1Deployment) -> list[k8s.V1ReplicaSet]:
        # As kubectl does: the ReplicaSets matching the selector that this deployment controls.
        found = self._selected("replicasets", self._apps().list_namespaced_replica_set, dep)
        return sorted(
            (
                rs
                for rs in found
                if any(
                    ref.controller and ref.uid == meta(dep).uid
                    for ref in meta(rs).owner_references or []
                )
            ),
            key=rs_revision,
        )

    def _pods(self, dep: k8s.V1Deployment) -> list[k8s.V1Pod]:
        return self._selected("pods", self._core().list_namespaced_pod, dep)

    def _selected(self, what: str, lister: Callable[..., Any], dep: k8s.V1Deployment) -> list[Any]:
        """The objects of our namespace that the deployment's label selector matches."""
        selector = ",".join(f"{k}={v}" for k, v in (dep.spec.selector.match_labels or {}).items())
        found = self._call(
            f"list {what} of {meta(dep).name}",
            lister,
            self.target.namespace,
            label_selector=selector,
        )
        return list(found.items)


# The client's models type every field the OpenAPI schema leaves optional as ``X | None``,
# metadata and specs included, though the API server always sends them on objects it
# returns. These accessors say so once: a missing one is a malformed answer, not a None
# to carry around.


class _Object(Protocol):
    @property
    def metadata(self) -> k8s.V1ObjectMeta | None: ...


class _PodHolder(Protocol):
    @property
    def spec(self) -> k8s.V1PodSpec | None: ...


def _malformed(obj: object, part: str) -> ProviderError:
    return ProviderError(f"the API server sent a {type(obj).__name__} without {part}")


def meta(obj: _Object) -> k8s.V1ObjectMeta:
    """An object's metadata."""
    if obj.metadata is None:
        raise _malformed(obj, "metadata")
    return obj.metadata


def annotations_of(obj: _Object) -> dict[str, str]:
    """An object's annotations; empty when it has none."""
    return meta(obj).annotations or {}


def pod_spec(obj: _PodHolder) -> k8s.V1PodSpec:
    """The pod spec of a pod or a pod template."""
    if obj.spec is None:
        raise _malformed(obj, "spec")
    return obj.spec


def rs_template(rs: k8s.V1ReplicaSet) -> k8s.V1PodTemplateSpec:
    """The pod template a ReplicaSet stamps its pods from."""
    if rs.spec is None or rs.spec.template is None:
        raise _malformed(rs, "pod template")
    return rs.spec.template


def rs_revision(rs: k8s.V1ReplicaSet) -> int:
    """Returns a ReplicaSet's revision annotation; 0 when missing or garbled."""
    try:
        return int(annotations_of(rs).get(REVISION, "0"))
    except ValueError:
        return 0


def template_images(template: k8s.V1PodTemplateSpec) -> list[str]:
    """Returns the images of a pod template's containers."""
    return [c.image or "" for c in pod_spec(template).containers]


def container_resources(c: k8s.V1Container) -> tuple[dict[str, str], dict[str, str]]:
    """Returns a container's resource limits and requests."""
    res = c.resources
    return dict((res and res.limits) or {}), dict((res and res.requests) or {})
