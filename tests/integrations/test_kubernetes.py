"""The Kubernetes integration, driven through the real ``kubernetes`` client against the
local API server of flows/drills/sandbox/kube_api.py; assertions are on what the server received
and on the state it holds afterwards."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import urllib3
import yaml
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from flows.drills.sandbox.kube_api import KubeApiServer
from integrations.errors import (
    AuthError,
    ConfigError,
    NotFound,
    ProviderError,
    RateLimited,
    Timeout,
    Unreachable,
)
from integrations.kubernetes import (
    KubernetesOperator,
    KubernetesReader,
    KubernetesTarget,
    translate_error,
)
from integrations.preflight import Shortfall

TOKEN = "kube-token-7f3a9c"  # a bearer token that must never show up anywhere
IMAGES = ["ghcr.io/acme/web:1.1", "ghcr.io/acme/web:1.2", "ghcr.io/acme/web:1.3"]


@pytest.fixture
def kube() -> Iterator[KubeApiServer]:
    with KubeApiServer(token=TOKEN, namespace="prod") as server:
        server.seed_deployment("web", IMAGES)
        yield server


@pytest.fixture
def target(kube: KubeApiServer) -> Callable[..., KubernetesTarget]:
    def make(**overrides: object) -> KubernetesTarget:
        fields = {"api_url": kube.url, "token": TOKEN, "namespace": "prod", "deployment": "web"}
        return KubernetesTarget(**{**fields, **overrides})

    return make


@pytest.fixture
def reader(target: Callable[..., KubernetesTarget]) -> Iterator[KubernetesReader]:
    with KubernetesReader(target()) as client:
        yield client


@pytest.fixture
def operator(target: Callable[..., KubernetesTarget]) -> Iterator[KubernetesOperator]:
    with KubernetesOperator(target()) as client:
        yield client


def _images(kube: KubeApiServer) -> list[str]:
    containers = kube.get("deployments", "web")["spec"]["template"]["spec"]["containers"]
    return [c["image"] for c in containers]


def _pod_images(kube: KubeApiServer) -> set[str]:
    return {p["spec"]["containers"][0]["image"] for p in kube.objects("pods")}


# -- reads --------------------------------------------------------------------------------


def test_deployment_status_reports_replicas_images_and_conditions(
    reader: KubernetesReader, kube: KubeApiServer
) -> None:
    status = reader.deployment()

    assert (status.desired, status.ready, status.updated, status.available) == (3, 3, 3, 3)
    assert status.images == ["ghcr.io/acme/web:1.3"]
    assert status.revision == 3 and status.generation == status.observed_generation == 3
    assert status.rolled_out
    assert {c.type: c.status for c in status.conditions} == {
        "Available": "True",
        "Progressing": "True",
    }
    assert status.containers[0].limits["memory"] == "256Mi"
    sent = kube.requests[-1]
    assert sent.path == "/apis/apps/v1/namespaces/prod/deployments/web" and sent.authenticated


def test_revisions_are_the_replicasets_with_their_revision_annotation(
    reader: KubernetesReader, kube: KubeApiServer
) -> None:
    history = reader.revisions()

    assert [r.revision for r in history] == [1, 2, 3]
    assert [r.images[0] for r in history] == IMAGES
    assert [r.current for r in history] == [False, False, True]
    assert [r.replicas for r in history] == [0, 0, 3]
    assert history[0].created < history[1].created < history[2].created
    listing = next(r for r in kube.requests if r.path.endswith("/replicasets"))
    assert listing.query == {"labelSelector": "app=web"}


def test_pods_show_oom_kills_restarts_and_resources(
    reader: KubernetesReader, kube: KubeApiServer
) -> None:
    killed = kube.seed_oom_kills("web", restarts=4)

    pods = reader.pods()

    assert sorted(p.name for p in pods) == sorted(killed)
    for pod in pods:
        app = pod.containers[0]
        assert pod.phase == "Running" and pod.ready and pod.restarts == 4
        assert app.oom_killed and app.last_termination_exit_code == 137
        assert app.last_terminated_at is not None and app.last_terminated_at < datetime.now(UTC)
        assert (
            app.limits == {"cpu": "500m", "memory": "256Mi"} and app.requests["memory"] == "128Mi"
        )
    assert kube.requests[-1].query == {"labelSelector": "app=web"}


def test_events_cover_the_deployment_and_its_pods(
    reader: KubernetesReader, kube: KubeApiServer
) -> None:
    kube.seed_oom_kills("web", restarts=2)

    events = reader.events()
    warnings = reader.events(warnings_only=True)

    assert any(e.kind == "Deployment" and e.reason == "ScalingReplicaSet" for e in events)
    assert {e.reason for e in warnings} == {"BackOff"} and len(warnings) == 3
    assert all(e.kind == "Pod" and e.count == 2 for e in warnings)
    selectors = [r.query.get("fieldSelector") for r in kube.requests if r.path.endswith("/events")]
    assert "involvedObject.kind=Deployment,involvedObject.name=web" in selectors


def test_logs_return_the_tail_of_the_previous_crashed_container(
    reader: KubernetesReader, kube: KubeApiServer
) -> None:
    pod = kube.seed_oom_kills("web")[0]

    text = reader.logs(pod, tail=1, previous=True)

    assert text == "ERROR java.lang.OutOfMemoryError: Java heap space\n"
    sent = kube.requests[-1]
    assert sent.path == f"/api/v1/namespaces/prod/pods/{pod}/log"
    assert sent.query == {"previous": "true", "tailLines": "1"}


# -- rollout restart ----------------------------------------------------------------------


def test_rollout_restart_annotates_the_template_like_kubectl(
    operator: KubernetesOperator, kube: KubeApiServer
) -> None:
    before = {p["metadata"]["name"] for p in kube.objects("pods")}

    sentence = operator.rollout_restart("web")

    (patch,) = kube.writes()
    assert (
        patch.method == "PATCH" and patch.content_type == "application/strategic-merge-patch+json"
    )
    stamp = patch.body["spec"]["template"]["metadata"]["annotations"][
        "kubectl.kubernetes.io/restartedAt"
    ]
    assert patch.body == {
        "spec": {
            "template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}}
        }
    }
    pods = kube.objects("pods")
    assert len(pods) == 3 and not before & {p["metadata"]["name"] for p in pods}
    assert all(p["status"]["containerStatuses"][0]["restartCount"] == 0 for p in pods)
    assert (
        kube.get("deployments", "web")["metadata"]["annotations"][
            "deployment.kubernetes.io/revision"
        ]
        == "4"
    )
    assert sentence == f"restarted deployment prod/web at {stamp}: revision 4 replaces its 3 pods"


def test_rollout_restart_with_not_before_does_not_restart_twice(
    operator: KubernetesOperator, kube: KubeApiServer
) -> None:
    asked_at = datetime.now(UTC) - timedelta(seconds=5)
    operator.rollout_restart("web", not_before=asked_at)

    again = operator.rollout_restart("web", not_before=asked_at)

    assert again.startswith("deployment prod/web was already restarted at ")
    assert len(kube.writes()) == 1


def test_preview_restart_lists_the_pods_and_changes_nothing(
    operator: KubernetesOperator, kube: KubeApiServer
) -> None:
    preview = operator.preview_restart("web")

    assert sorted(preview.touches) == sorted(p["metadata"]["name"] for p in kube.objects("pods"))
    assert kube.writes() == []


# -- rollout undo -------------------------------------------------------------------------


def test_rollout_undo_goes_back_to_the_previous_revision(
    operator: KubernetesOperator, kube: KubeApiServer
) -> None:
    resource_version = kube.get("deployments", "web")["metadata"]["resourceVersion"]

    sentence = operator.rollout_undo("web")

    (patch,) = kube.writes()
    assert patch.content_type == "application/json-patch+json"
    test_op, template_op, annotations_op = patch.body
    assert test_op == {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version}
    assert template_op["op"] == "replace" and template_op["path"] == "/spec/template"
    assert template_op["value"]["spec"]["containers"][0]["image"] == "ghcr.io/acme/web:1.2"
    assert "pod-template-hash" not in template_op["value"]["metadata"]["labels"]
    assert annotations_op["value"]["deployment.kubernetes.io/revision"] == "3"
    assert _images(kube) == ["ghcr.io/acme/web:1.2"] and _pod_images(kube) == {
        "ghcr.io/acme/web:1.2"
    }
    # As the deployment controller does: revision 2's ReplicaSet is reused as revision 4.
    notes = {
        rs["metadata"]["name"]: rs["metadata"]["annotations"] for rs in kube.objects("replicasets")
    }
    reused = next(n for n in notes.values() if n["deployment.kubernetes.io/revision"] == "4")
    assert reused["deployment.kubernetes.io/revision-history"] == "2"
    assert sentence == (
        "rolled back deployment prod/web from revision 3 (ghcr.io/acme/web:1.3) to the template of "
        "revision 2 (ghcr.io/acme/web:1.2); it is now revision 4"
    )


def test_rollout_undo_to_a_named_revision(
    operator: KubernetesOperator, kube: KubeApiServer
) -> None:
    sentence = operator.rollout_undo("web", to_revision=1)

    assert _images(kube) == ["ghcr.io/acme/web:1.1"] and _pod_images(kube) == {
        "ghcr.io/acme/web:1.1"
    }
    assert "to the template of revision 1 (ghcr.io/acme/web:1.1)" in sentence


def test_rollout_undo_to_the_current_template_is_skipped(
    operator: KubernetesOperator, kube: KubeApiServer
) -> None:
    sentence = operator.rollout_undo("web", to_revision=3)

    assert sentence.startswith(
        "skipped rollback: deployment prod/web already runs the template of revision 3"
    )
    assert kube.writes() == []


def test_rollout_undo_without_a_previous_revision_raises_not_found_and_changes_nothing(
    operator: KubernetesOperator, kube: KubeApiServer
) -> None:
    kube.seed_deployment("api", ["ghcr.io/acme/api:2.0"])

    with pytest.raises(NotFound, match="no rollout history found for deployment prod/api"):
        operator.rollout_undo("api")
    with pytest.raises(NotFound, match=r"unable to find revision 7 .* \(revisions: \[1, 2, 3\]\)"):
        operator.rollout_undo("web", to_revision=7)

    assert kube.writes() == []
    assert kube.get("deployments", "api")["metadata"]["generation"] == 1


def test_preview_undo_names_both_revisions_and_changes_nothing(
    operator: KubernetesOperator, kube: KubeApiServer
) -> None:
    preview = operator.preview_undo("web")

    assert preview.before == {"revision": 3, "images": ["ghcr.io/acme/web:1.3"]}
    assert preview.after["revision"] == 2 and preview.after["images"] == ["ghcr.io/acme/web:1.2"]
    assert len(preview.touches) == 3 and not preview.noop
    assert kube.writes() == []


def test_rollback_recovers_a_crash_looping_deploy(target: Callable[..., KubernetesTarget]) -> None:
    with KubeApiServer(token=TOKEN, namespace="prod") as kube:
        kube.crashing_images.add("ghcr.io/acme/web:1.4")
        kube.seed_deployment("web", ["ghcr.io/acme/web:1.3", "ghcr.io/acme/web:1.4"])
        t = KubernetesTarget(api_url=kube.url, token=TOKEN, namespace="prod", deployment="web")
        with KubernetesReader(t) as reader, KubernetesOperator(t) as operator:
            broken = reader.deployment()
            operator.rollout_undo("web")
            healed = reader.deployment()

    assert not broken.rolled_out and broken.ready == 0
    assert {c.type: c.status for c in broken.conditions}["Available"] == "False"
    assert healed.rolled_out and healed.images == ["ghcr.io/acme/web:1.3"]


# -- scale, memory limit, secret ----------------------------------------------------------


def test_scale_uses_the_scale_subresource_and_is_idempotent(
    operator: KubernetesOperator, kube: KubeApiServer
) -> None:
    first = operator.scale("web", 5)
    second = operator.scale("web", 5)

    (patch,) = kube.writes()
    assert patch.path.endswith("/deployments/web/scale")
    assert patch.content_type == "application/merge-patch+json" and patch.body == {
        "spec": {"replicas": 5}
    }
    assert first == "scaled deployment prod/web from 3 to 5 replicas"
    assert second == "deployment prod/web is already at 5 replicas"
    assert len(kube.objects("pods")) == 5
    with pytest.raises(ConfigError):
        operator.scale("web", -1)


def test_set_memory_limit_rolls_out_a_new_template(
    operator: KubernetesOperator, kube: KubeApiServer
) -> None:
    sentence = operator.set_memory_limit("web", "app", "512Mi")
    same = operator.set_memory_limit("web", "app", "0.5Gi")

    (patch,) = kube.writes()
    assert patch.body == {
        "spec": {
            "template": {
                "spec": {
                    "containers": [{"name": "app", "resources": {"limits": {"memory": "512Mi"}}}]
                }
            }
        }
    }
    container = kube.get("deployments", "web")["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "500m", "memory": "512Mi"}
    assert all(
        p["spec"]["containers"][0]["resources"]["limits"]["memory"] == "512Mi"
        for p in kube.objects("pods")
    )
    assert sentence.endswith("from 256Mi to 512Mi; revision 4 replaces its pods")
    assert same == "container app of deployment prod/web already has memory limit 512Mi"


def test_set_memory_limit_rejects_bad_input_before_sending(
    operator: KubernetesOperator, kube: KubeApiServer
) -> None:
    with pytest.raises(ConfigError, match="not a Kubernetes quantity"):
        operator.set_memory_limit("web", "app", "lots")
    with pytest.raises(ConfigError, match="requests 128Mi, above the new limit 64Mi"):
        operator.set_memory_limit("web", "app", "64Mi")
    with pytest.raises(NotFound, match="has no container 'sidecar'"):
        operator.set_memory_limit("web", "sidecar", "1Gi")
    assert kube.writes() == []


def test_patch_secret_sets_the_value_and_never_shows_it(
    operator: KubernetesOperator, kube: KubeApiServer
) -> None:
    value = "hms-mgmt-token-super-secret"
    kube.seed_secret("hms", {"HMS_MANAGEMENT_TOKEN": "old-token-value"})

    preview = operator.preview_secret("hms", "HMS_MANAGEMENT_TOKEN", value)
    sentence = operator.patch_secret("hms", "HMS_MANAGEMENT_TOKEN", value)
    again = operator.patch_secret("hms", "HMS_MANAGEMENT_TOKEN", value)

    stored = kube.get("secrets", "hms")["data"]["HMS_MANAGEMENT_TOKEN"]
    assert base64.b64decode(stored).decode() == value
    assert len(kube.writes()) == 1
    assert again == "key HMS_MANAGEMENT_TOKEN of secret prod/hms already holds that value"
    for text in (sentence, again, repr(preview), repr(operator)):
        assert value not in text and base64.b64encode(value.encode()).decode() not in text


# -- errors and preflight -----------------------------------------------------------------


def test_a_wrong_token_is_an_auth_error_without_the_token(
    target: Callable[..., KubernetesTarget],
) -> None:
    with (
        KubernetesReader(target(token="wrong-token")) as reader,
        pytest.raises(AuthError) as caught,
    ):
        reader.deployment()

    assert caught.value.status == 401 and "wrong-token" not in str(caught.value)
    assert TOKEN not in repr(target()) and TOKEN not in str(target().model_dump())


def test_rbac_denial_is_an_auth_error(operator: KubernetesOperator, kube: KubeApiServer) -> None:
    kube.forbid("patch", "deployments/scale")

    with pytest.raises(AuthError, match='cannot patch resource "deployments/scale"') as caught:
        operator.scale("web", 6)

    assert caught.value.status == 403
    assert kube.get("deployments", "web")["spec"]["replicas"] == 3


def test_a_missing_deployment_is_not_found(target: Callable[..., KubernetesTarget]) -> None:
    with KubernetesReader(target(deployment="nope")) as reader, pytest.raises(NotFound) as caught:
        reader.deployment()

    assert caught.value.status == 404 and 'deployments.apps "nope" not found' in str(caught.value)


def test_server_errors_are_provider_errors(
    operator: KubernetesOperator, kube: KubeApiServer
) -> None:
    kube.fail_next("PATCH", "/deployments/web", code=500)

    with pytest.raises(ProviderError) as caught:
        operator.rollout_restart("web")

    assert caught.value.status == 500
    assert _images(kube) == ["ghcr.io/acme/web:1.3"]


def test_a_server_that_is_down_is_unreachable() -> None:
    with KubeApiServer() as gone:
        url = gone.url
    target = KubernetesTarget(api_url=url, token=TOKEN, deployment="web", timeout=2)

    with KubernetesReader(target) as reader, pytest.raises(Unreachable) as caught:
        reader.deployment()

    assert TOKEN not in str(caught.value)


async def test_preflight_reports_each_capability(
    target: Callable[..., KubernetesTarget], kube: KubeApiServer
) -> None:
    kube.forbid("patch", "secrets")

    with KubernetesReader(target()) as good, KubernetesReader(target(token="expired")) as bad:
        ok, refused = await good.preflight(), await bad.preflight()
    with KubernetesOperator(target()) as operator:
        writes = await operator.preflight()

    assert ok == {
        "api": True,
        "read_deployment": True,
        "list_pods": True,
        "list_events": True,
        "may_patch_deployment": True,
        "may_scale_deployment": True,
    }
    # Refused credentials are said once, not once per capability.
    assert list(refused) == ["api"] and "HTTP 401" in refused["api"]
    assert isinstance(refused["api"], Shortfall) and refused["api"].kind == "auth"
    assert writes["patch_deployments"] is True and writes["scale_deployments"] is True
    denied = writes["patch_secrets"]
    assert isinstance(denied, Shortfall) and denied.kind == "denied"
    assert denied == (
        "kubernetes prod/web: not allowed to patch secrets in namespace prod"
        " (no RBAC rule allows it)"
    )


async def test_preflight_asks_whether_the_runbooks_may_patch_and_scale_the_deployment(
    target: Callable[..., KubernetesTarget], kube: KubeApiServer
) -> None:
    kube.forbid("patch", "deployments/scale", namespace="prod")
    kube.forbid("patch", "deployments", namespace="elsewhere")  # another namespace: no effect

    with KubernetesReader(target()) as reader:
        found = await reader.preflight()

    assert found["may_patch_deployment"] is True
    assert found["may_scale_deployment"].kind == "denied"
    assert "not allowed to patch deployments/scale web" in found["may_scale_deployment"]
    reviews = [r for r in kube.requests if r.path.endswith("/selfsubjectaccessreviews")]
    assert [r.body["spec"]["resourceAttributes"] for r in reviews] == [
        {
            "namespace": "prod",
            "verb": "patch",
            "group": "apps",
            "resource": "deployments",
            "name": "web",
        },
        {
            "namespace": "prod",
            "verb": "patch",
            "group": "apps",
            "resource": "deployments",
            "subresource": "scale",
            "name": "web",
        },
    ]
    assert kube.writes() == reviews  # questions only: nothing was patched
    # What the review said is what the API then does.
    with KubernetesOperator(target()) as operator, pytest.raises(AuthError):
        operator.scale("web", 5)


def test_access_reviews_answer_as_kube_apiserver_does(kube: KubeApiServer) -> None:
    kube.forbid("patch", "secrets")
    url = f"{kube.url}/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
    headers = {"Authorization": f"Bearer {TOKEN}"}

    def review(spec: dict) -> httpx.Response:
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview"}
        return httpx.post(url, json={**body, "spec": spec}, headers=headers)

    allowed = review({"resourceAttributes": {"verb": "get", "resource": "pods"}})
    assert allowed.status_code == 201
    assert allowed.json()["kind"] == "SelfSubjectAccessReview"
    assert allowed.json()["status"]["reason"].startswith("RBAC: allowed by ClusterRoleBinding")
    refused = review({"resourceAttributes": {"verb": "patch", "resource": "secrets"}})
    assert refused.json()["status"] == {"allowed": False}  # RBAC only fails to allow
    empty = review({})
    assert empty.status_code == 422 and "exactly one of" in empty.json()["message"]
    discovery = review({"nonResourceAttributes": {"verb": "get", "path": "/version"}})
    assert discovery.json()["status"]["allowed"] is True
    stranger = httpx.post(url, json={"spec": {}}, headers={"Authorization": "Bearer nope"})
    assert stranger.status_code == 401


def test_a_kubeconfig_context_is_used_when_no_api_url_is_given(
    kube: KubeApiServer, tmp_path: Path
) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "sandbox", "cluster": {"server": kube.url}}],
                "users": [{"name": "runbooks", "user": {"token": TOKEN}}],
                "contexts": [
                    {"name": "oncall", "context": {"cluster": "sandbox", "user": "runbooks"}}
                ],
                "current-context": "oncall",
            }
        )
    )
    target = KubernetesTarget(
        deployment="web", namespace="prod", kubeconfig=str(config), context="oncall"
    )

    with KubernetesReader(target) as reader:
        assert reader.deployment().images == ["ghcr.io/acme/web:1.3"]
    assert kube.requests[-1].authenticated

    missing = KubernetesTarget(deployment="web", kubeconfig=str(tmp_path / "nope"))
    with (
        KubernetesReader(missing) as reader,
        pytest.raises(ConfigError, match="cannot load kubeconfig"),
    ):
        reader.deployment()


@pytest.mark.parametrize(
    ("error", "expected", "status"),
    [
        (ApiException(status=401, reason="Unauthorized"), AuthError, 401),
        (ApiException(status=403, reason="Forbidden"), AuthError, 403),
        (ApiException(status=404, reason="Not Found"), NotFound, 404),
        (ApiException(status=409, reason="Conflict"), ProviderError, 409),
        (ApiException(status=422, reason="Unprocessable Entity"), ProviderError, 422),
        (ApiException(status=429, reason="Too Many Requests"), RateLimited, 429),
        (ApiException(status=503, reason="Service Unavailable"), ProviderError, 503),
        (ApiException(status=0, reason="SSLError\ncertificate verify failed"), Unreachable, None),
        (
            urllib3.exceptions.MaxRetryError(
                None, "/", urllib3.exceptions.NewConnectionError(None, "refused")
            ),
            Unreachable,
            None,
        ),  # noqa: E501
        (urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out"), Timeout, None),
        (urllib3.exceptions.ProtocolError("connection reset"), ProviderError, None),
        (ConfigException("Invalid kube-config file"), ConfigError, None),
    ],
)
def test_every_client_error_maps_to_our_tree(
    error: Exception, expected: type, status: int | None
) -> None:
    mapped = translate_error(error, "kubernetes prod/web", "read deployment web")

    assert type(mapped) is expected
    assert str(mapped).startswith("kubernetes prod/web: read deployment web")
    assert getattr(mapped, "status", None) == status
