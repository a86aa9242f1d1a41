"""Deploy checks: the verdict logic on its own, then each platform against its local server
(Kubernetes API, Docker Engine, Vercel), and error rates before/after deploys from a real
Prometheus scraping the faulty sandbox app."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from checks.deploys import (
    Deploy,
    DeployPolicy,
    Symptom,
    assess,
    docker_deploys,
    kubernetes_deploys,
    vercel_deploys,
)
from checks.findings import Severity, Status, timed
from flows.drills.sandbox.kube_api import KubeApiServer
from flows.drills.sandbox.saas import SaasSandbox
from integrations.docker import DockerReader, DockerTarget
from integrations.kubernetes import KubernetesReader, KubernetesTarget
from integrations.prometheus import PrometheusClient, PrometheusTarget
from integrations.vercel import VercelClient
from tests.support.docker_api import DockerApiServer

# The verdict is pure: one frozen instant, so no test depends on when it runs. (A time taken
# at import drifted from the now() in _policy by the time a slow suite reached the test.)
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
API = ["ghcr.io/acme/api:1.4.0", "ghcr.io/acme/api:1.4.1", "ghcr.io/acme/api:1.4.2"]
TOKEN = "kube-token-5e1d"


def _policy(minutes_ago: float = 30, now: datetime | None = None, **extra: Any) -> DeployPolicy:
    """Incident start ``minutes_ago`` before ``now``: the wall clock for the local servers,
    which stamp their deployments with it; T0 for the pure verdict."""
    start = (now or datetime.now(UTC)) - timedelta(minutes=minutes_ago)
    return DeployPolicy(incident_start=start, **extra)


def _verdict_policy(**extra: Any) -> DeployPolicy:
    return _policy(now=T0, **extra)


def _deploy(ref: str, minutes_ago: float, **extra: Any) -> Deploy:
    created = T0 - timedelta(minutes=minutes_ago)
    return Deploy(platform="kubernetes", ref=ref, label=f"revision {ref}", created=created, **extra)


# -- the verdict ----------------------------------------------------------------------------


def test_recent_deploy_with_failing_rollout_is_the_confirmed_suspect():
    history = [_deploy("5", 9000), _deploy("6", 3000), _deploy("7", 10, current=True)]
    verdict = assess(history, _verdict_policy(), Symptom(text="0/3 pods ready", outage=True))
    assert verdict.suspect.ref == "7" and verdict.confirmed
    assert verdict.last_good.ref == "6"
    assert "20 min after the incident start" in verdict.why and "0/3 pods ready" in verdict.why


def test_recent_deploy_without_any_signal_is_a_suspect_by_timing_only():
    verdict = assess([_deploy("1", 900), _deploy("2", 5, current=True)], _verdict_policy(), None)
    assert verdict.suspect.ref == "2" and not verdict.confirmed
    assert "timing only" in verdict.why


def test_old_deploy_is_not_a_suspect():
    verdict = assess([_deploy("1", 9000), _deploy("2", 600, current=True)], _verdict_policy(), None)
    assert verdict.suspect is None and verdict.why.startswith("no deploy since")


def test_an_error_rate_that_did_not_rise_clears_a_recent_deploy():
    current = _deploy("2", 5, current=True, error_before_pct=8.0, error_after_pct=8.5)
    verdict = assess([_deploy("1", 900), current], _verdict_policy(), None)
    assert verdict.suspect is None and "did not rise" in verdict.why
    assert current.verdict == "cleared"


def test_a_regression_implicates_even_an_older_deploy():
    current = _deploy("2", 120, current=True, error_before_pct=0.1, error_after_pct=12.0)
    verdict = assess([_deploy("1", 9000), current], _verdict_policy(), None)
    assert verdict.suspect.ref == "2" and verdict.confirmed
    assert "0.1% → 12.0%" in verdict.why


def test_last_good_skips_deploys_that_were_bad_unknown_or_gone():
    history = [
        _deploy("3", 9000),
        _deploy("4", 8000, available=False),
        _deploy("5", 20, error_after_pct=30.0),
        _deploy("6", 15),  # inside the incident window, no metrics: unknown
        _deploy("7", 5, current=True),
    ]
    verdict = assess(history, _verdict_policy(), Symptom(text="crashing"))
    assert verdict.last_good.ref == "3"
    assert [d.verdict for d in history] == [
        "last known good",
        "not available",
        "bad: error rate 30.0% while live",
        "unknown: went live inside the incident window",
        "suspect",
    ]


def test_a_deploy_that_ran_clean_is_good_even_inside_the_window():
    history = [
        _deploy("1", 9000),
        _deploy("2", 20, error_after_pct=0.2),
        _deploy("3", 5, current=True),
    ]
    assert assess(history, _verdict_policy(), None).last_good.ref == "2"


def test_only_one_deploy_means_nothing_to_roll_back_to():
    verdict = assess([_deploy("1", 5, current=True)], _verdict_policy(), Symptom(text="crashing"))
    assert verdict.suspect.ref == "1" and verdict.last_good is None
    assert "only deploy" in verdict.no_good


def test_an_explicit_target_wins_and_must_exist():
    history = [_deploy("1", 9000), _deploy("2", 8000), _deploy("3", 5, current=True)]
    assert assess(history, _verdict_policy(to="1"), None).last_good.ref == "1"
    missing = assess(history, _verdict_policy(to="9"), None)
    assert missing.last_good is None and "'9' is not an earlier deploy" in missing.no_good
    old = [_deploy("1", 9000), _deploy("2", 8000, current=True)]
    asked = assess(old, _verdict_policy(to="1"), None)
    assert asked.suspect.ref == "2" and asked.last_good.ref == "1"


# -- Kubernetes -----------------------------------------------------------------------------


@pytest.fixture
def kube() -> Iterator[KubeApiServer]:
    with KubeApiServer(token=TOKEN, namespace="prod") as server:
        yield server


def _kube_target(kube: KubeApiServer, **extra: Any) -> KubernetesTarget:
    fields = {"api_url": kube.url, "token": TOKEN, "namespace": "prod", "deployment": "api"}
    return KubernetesTarget(**{**fields, **extra})


async def test_kubernetes_crashing_revision_is_the_suspect(kube):
    kube.crashing_images.add(API[2])
    kube.seed_deployment("api", API, deployed_ago=timedelta(minutes=10))
    with KubernetesReader(_kube_target(kube)) as reader:
        [f] = await kubernetes_deploys(reader, _policy())
    assert (f.status, f.severity) == (Status.CRITICAL, Severity.P0)
    assert f.summary.startswith(f"suspect: revision 3 (image {API[2]}) went live 20 min after")
    assert "0/3 pods ready (CrashLoopBackOff)" in f.summary
    assert f.summary.endswith(f"last known good: revision 2 (image {API[1]})")
    assert f.evidence["where"]["deployment"] == "api" and len(f.evidence["where"]["pods"]) == 3
    assert f.evidence["suspect"]["detail"]["images"] == [API[2]]
    assert [d["ref"] for d in f.evidence["deploys"]] == ["3", "2", "1"]
    assert kube.writes() == []


async def test_kubernetes_single_revision_has_nothing_to_roll_back_to(kube):
    kube.crashing_images.add(API[0])
    kube.seed_deployment("api", API[:1], deployed_ago=timedelta(minutes=5))
    with KubernetesReader(_kube_target(kube)) as reader:
        [f] = await kubernetes_deploys(reader, _policy())
    assert f.status is Status.CRITICAL and f.evidence["last_good"] is None
    assert "nothing to roll back to" in f.summary and "only deploy" in f.summary


async def test_kubernetes_old_healthy_deploy_is_ok(kube):
    kube.seed_deployment("api", API, deployed_ago=timedelta(hours=5))
    with KubernetesReader(_kube_target(kube)) as reader:
        [f] = await kubernetes_deploys(reader, _policy())
    assert f.status is Status.OK and f.evidence["suspect"] is None
    assert f"live: revision 3 (image {API[2]})" in f.summary


async def test_kubernetes_refused_token_and_dead_server_are_error_findings(kube):
    kube.seed_deployment("api", API)
    with KubernetesReader(_kube_target(kube, token="wrong-token")) as reader:
        [f] = await timed("kubernetes_deploys", "t", lambda: kubernetes_deploys(reader, _policy()))
    assert f.status is Status.ERROR and f.evidence["error"] == "AuthError"
    assert "wrong-token" not in f.summary
    target = _kube_target(kube)
    kube.stop()
    with KubernetesReader(target) as reader:
        [f] = await timed("kubernetes_deploys", "t", lambda: kubernetes_deploys(reader, _policy()))
    assert f.status is Status.ERROR and f.unreachable


async def test_kubernetes_server_error_is_an_error_finding(kube):
    kube.seed_deployment("api", API)
    kube.fail_next("GET", "/replicasets", code=503)
    with KubernetesReader(_kube_target(kube)) as reader:
        [f] = await timed("kubernetes_deploys", "t", lambda: kubernetes_deploys(reader, _policy()))
    assert f.status is Status.ERROR and f.evidence["error"] == "ProviderError"


# -- Docker ---------------------------------------------------------------------------------

WEB = ["ghcr.io/acme/web:1.1", "ghcr.io/acme/web:1.2", "ghcr.io/acme/web:1.3"]


@pytest.fixture
def engine() -> Iterator[DockerApiServer]:
    with DockerApiServer() as server:
        yield server


async def test_docker_restarting_image_is_the_suspect(engine):
    engine.crashing_images.add(WEB[2])
    engine.seed_compose_service("shop", "web", WEB, replicas=2)
    target = DockerTarget(base_url=engine.base_url, compose_project="shop", compose_service="web")
    with DockerReader(target) as reader:
        [f] = await docker_deploys(reader, _policy(minutes_ago=50))
    assert (f.status, f.severity) == (Status.CRITICAL, Severity.P0)
    assert f"image {WEB[2]} went live 10 min before the incident start" in f.summary
    assert "2/2 containers failing" in f.summary
    assert f.summary.endswith(f"last known good: image {WEB[1]}")
    assert [c["name"] for c in f.evidence["where"]["containers"]] == ["shop-web-1", "shop-web-2"]
    assert engine.writes() == []


async def test_docker_old_image_is_ok_and_a_dead_daemon_is_an_error(engine):
    engine.seed_compose_service("shop", "web", WEB, replicas=1)
    target = DockerTarget(base_url=engine.base_url, container="shop-web-1")
    with DockerReader(target) as reader:
        [f] = await docker_deploys(reader, _policy(minutes_ago=10))
    assert f.status is Status.OK and f.evidence["current"]["ref"] == WEB[2]
    engine.stop()
    with DockerReader(target) as reader:
        [f] = await timed("docker_deploys", "t", lambda: docker_deploys(reader, _policy()))
    assert f.status is Status.ERROR and f.unreachable


# -- Vercel ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saas() -> Iterator[SaasSandbox]:
    with SaasSandbox() as sandbox:
        yield sandbox


@pytest.fixture
def vercel(saas: SaasSandbox) -> SaasSandbox:
    saas.reset()
    return saas


async def test_vercel_recent_production_deploy_is_a_suspect_by_timing(vercel):
    async with VercelClient(vercel.vercel_target()) as client:
        [f] = await vercel_deploys(client, _policy(minutes_ago=90))
    assert (f.status, f.severity) == (Status.WARN, Severity.P2)
    assert f.evidence["suspect"]["ref"] == "dpl_sandbox2"
    assert f.evidence["last_good"]["ref"] == "dpl_sandbox1"
    assert "commit b2c3d4e 'release 1'" in f.summary
    assert all(r.method == "GET" for r in vercel.received("vercel"))


async def test_vercel_refused_token_and_server_errors_are_error_findings(vercel):
    async with VercelClient(vercel.vercel_target(token="wrong")) as client:
        [f] = await timed("vercel_deploys", "t", lambda: vercel_deploys(client, _policy()))
    assert f.status is Status.ERROR and f.evidence["error"] == "AuthError"
    vercel.fault("vercel", status=500)
    async with VercelClient(vercel.vercel_target(retries=0)) as client:
        [f] = await timed("vercel_deploys", "t", lambda: vercel_deploys(client, _policy()))
    assert f.status is Status.ERROR and f.evidence["error"] == "ProviderError"


# -- error rates from a real Prometheus -----------------------------------------------------


@pytest.fixture(scope="module")
def timeline(saas: SaasSandbox) -> Iterator[dict[str, Any]]:
    """A faulty app scraped by Prometheus: clean, a calm deploy, then a deploy that fails half."""
    from flows.drills.sandbox.apps import SandboxApp
    from flows.drills.sandbox.prometheus import PrometheusProcess, SandboxUnavailable

    try:
        prom = PrometheusProcess()
    except SandboxUnavailable as exc:
        pytest.skip(str(exc))
    with SandboxApp("faulty", error_rate=0.0, rps=40) as app:
        prom.set_targets({"faulty": [app.address]})
        with prom:
            time.sleep(6)
            calm = datetime.now(UTC)
            time.sleep(6)
            bad = datetime.now(UTC)
            app.control(error_rate=0.5)
            time.sleep(6)
            yield {"prom": prom, "calm": calm, "bad": bad}


def _vercel_history(saas: SaasSandbox, times: list[datetime], live: int) -> None:
    saas.reset()
    for doc, when in zip(reversed(saas.deployments), times, strict=True):
        doc["created"] = doc["createdAt"] = int(when.timestamp() * 1000)
    saas.production_id = f"dpl_sandbox{live}"


async def test_error_rate_rising_after_a_deploy_confirms_it(saas, timeline):
    _vercel_history(
        saas, [timeline["calm"] - timedelta(days=2), timeline["calm"], timeline["bad"]], live=2
    )
    policy = DeployPolicy(
        incident_start=timeline["calm"] - timedelta(seconds=1), grace_s=0, error_window_s=4
    )
    async with (
        VercelClient(saas.vercel_target()) as client,
        PrometheusClient(PrometheusTarget(url=timeline["prom"].url)) as prom,
    ):
        [f] = await vercel_deploys(client, policy, prom)
    suspect, good = f.evidence["suspect"], f.evidence["last_good"]
    assert (f.status, f.severity) == (Status.CRITICAL, Severity.P0)
    assert suspect["ref"] == "dpl_sandbox2"
    assert suspect["error_before_pct"] < 1 and suspect["error_after_pct"] == pytest.approx(
        50, abs=12
    )
    # dpl_sandbox1 went live inside the incident window but ran clean: known good by metrics.
    assert good["ref"] == "dpl_sandbox1" and good["error_after_pct"] < 1


async def test_a_recent_deploy_the_error_rate_did_not_follow_is_cleared(saas, timeline):
    later = datetime.now(UTC)
    _vercel_history(saas, [timeline["calm"] - timedelta(days=2), timeline["calm"], later], live=1)
    policy = DeployPolicy(
        incident_start=timeline["calm"] - timedelta(seconds=1), grace_s=0, error_window_s=4
    )
    async with (
        VercelClient(saas.vercel_target()) as client,
        PrometheusClient(PrometheusTarget(url=timeline["prom"].url)) as prom,
    ):
        [f] = await vercel_deploys(client, policy, prom)
    assert f.status is Status.OK and f.evidence["suspect"] is None
    assert "did not rise" in f.summary
