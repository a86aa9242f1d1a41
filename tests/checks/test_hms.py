"""100ms checks against the local SaaS sandbox and the local Kubernetes / Docker API servers."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from pydantic import SecretStr

from checks.findings import Severity, Status, timed
from checks.hms import (
    TokenSource,
    api_calls,
    hms_status_page,
    recent_deploys,
    room_usage,
    token_validity,
)
from flows.drills.sandbox.kube_api import KubeApiServer
from flows.drills.sandbox.saas import SaasSandbox
from integrations.docker import DockerReader, DockerTarget
from integrations.hms import management_token
from integrations.kubernetes import KubernetesOperator, KubernetesReader, KubernetesTarget
from integrations.statuspage import StatuspagePublic
from tests.support.docker_api import DockerApiServer

SECRET_NAME, KEY = "hms-credentials", "HMS_MANAGEMENT_TOKEN"


@pytest.fixture(scope="module")
def running():
    with SaasSandbox() as sb:
        yield sb


@pytest.fixture
def sandbox(running: SaasSandbox) -> SaasSandbox:
    running.reset()
    return running


@pytest.fixture
def kube():
    with KubeApiServer() as server:
        server.seed_deployment("video-api", ["video-api:1.4.1", "video-api:1.4.2"], replicas=2)
        yield server


@pytest.fixture
def reader(kube: KubeApiServer):
    with KubernetesReader(KubernetesTarget(deployment="video-api", api_url=kube.url)) as client:
        yield client


def _source(sandbox: SaasSandbox, reader=None, **target) -> TokenSource:
    return TokenSource(sandbox.hms_target(**target), kubernetes=reader)


def _no_token_in(findings, *tokens: str) -> None:
    text = json.dumps([f.model_dump(mode="json") for f in findings])
    for token in tokens:
        assert token not in text


# -- the management token where the app reads it ---------------------------------------------


async def test_expired_token_in_the_kubernetes_secret_is_critical(sandbox, kube, reader):
    expired = sandbox.management_token(ttl=-600)
    kube.seed_secret(SECRET_NAME, {KEY: expired})
    [finding] = await token_validity(_source(sandbox, reader))
    assert finding.status is Status.CRITICAL and finding.severity is Severity.P1
    assert finding.evidence["expired"] and finding.evidence["source"] == "kubernetes"
    assert finding.evidence["app"]["deployment"] == "video-api"
    assert len(finding.evidence["app"]["pods"]) == 2
    assert "secret hms-credentials key HMS_MANAGEMENT_TOKEN" in finding.summary
    assert "expired at" in finding.summary and "regenerate it" in finding.summary
    _no_token_in([finding], expired, sandbox.hms_app_secret)


async def test_valid_expiring_and_foreign_tokens_are_told_apart(sandbox, kube, reader):
    source = _source(sandbox, reader)
    kube.seed_secret(SECRET_NAME, {KEY: sandbox.management_token(ttl=86400)})
    [valid] = await token_validity(source)
    kube.seed_secret(SECRET_NAME, {KEY: sandbox.management_token(ttl=600)})
    [expiring] = await token_validity(source, warn_seconds=3600)
    other = management_token("another-app", sandbox.hms_app_secret)
    kube.seed_secret(SECRET_NAME, {KEY: other})
    [foreign] = await token_validity(source)
    kube.seed_secret(SECRET_NAME, {KEY: "not-a-jwt"})
    [garbage] = await token_validity(source)
    assert valid.status is Status.OK and valid.evidence["seconds_left"] > 86000
    assert expiring.status is Status.WARN and expiring.evidence["expiring_soon"]
    assert foreign.status is Status.CRITICAL and foreign.evidence["access_key_matches"] is False
    assert garbage.status is Status.CRITICAL and "not a readable JWT" in garbage.summary
    _no_token_in([valid, expiring, foreign, garbage], other, "not-a-jwt")


async def test_missing_secret_is_an_error_finding(sandbox, reader):
    [finding] = await timed(
        "management_token", "t", lambda: token_validity(_source(sandbox, reader))
    )
    assert finding.status is Status.ERROR and not finding.unreachable
    assert 'secrets "hms-credentials" not found' in finding.summary


async def test_token_in_a_container_environment_is_read_there(sandbox):
    expired = sandbox.management_token(ttl=-60)
    with DockerApiServer() as engine:
        engine.add_image("video-api:1.4.2")
        engine.add_container("video-api", "video-api:1.4.2", env=[f"{KEY}={expired}"])
        target = DockerTarget(base_url=engine.base_url, container="video-api")
        with DockerReader(target) as docker:
            source = TokenSource(sandbox.hms_target(), docker=docker)
            [finding] = await token_validity(source)
    assert finding.status is Status.CRITICAL and finding.evidence["source"] == "docker"
    assert finding.evidence["app"] == {"kind": "docker", "containers": ["video-api"]}
    assert "environment variable HMS_MANAGEMENT_TOKEN of docker video-api" in finding.summary
    _no_token_in([finding], expired)


async def test_configured_and_self_signed_tokens(sandbox):
    configured = sandbox.hms_target(management_token=SecretStr(sandbox.management_token(ttl=-5)))
    [from_config] = await token_validity(TokenSource(configured))
    [unknown] = await token_validity(TokenSource(sandbox.hms_target()))
    assert from_config.status is Status.CRITICAL and from_config.evidence["source"] == "config"
    assert unknown.status is Status.UNKNOWN and "not visible to oncall" in unknown.summary


# -- answer codes and latency ------------------------------------------------------------------


async def test_expired_token_makes_every_call_a_401(sandbox, kube, reader):
    kube.seed_secret(SECRET_NAME, {KEY: sandbox.management_token(ttl=-600)})
    [finding] = await api_calls(_source(sandbox, reader), probes=4)
    assert finding.status is Status.CRITICAL and finding.severity is Severity.P1
    assert finding.evidence["error_kind"] == "auth" and finding.evidence["counts"] == {"auth": 4}
    assert {c["status"] for c in finding.evidence["calls"]} == {401}
    assert {c["endpoint"] for c in finding.evidence["calls"]} == {"/rooms", "/sessions"}
    assert "token expired at" in finding.summary
    assert len(sandbox.received("hms")) == 4, "one request per probe: no retries"


async def test_a_valid_token_answers_200_with_latency(sandbox, kube, reader):
    kube.seed_secret(SECRET_NAME, {KEY: sandbox.management_token()})
    [finding] = await api_calls(_source(sandbox, reader), probes=3)
    assert finding.status is Status.OK and finding.evidence["counts"] == {"ok": 3}
    assert finding.evidence["median_latency_ms"] > 0
    assert {c["status"] for c in finding.evidence["calls"]} == {200}


async def test_rate_limits_are_a_p2_warning_with_retry_after(sandbox):
    sandbox.fault("hms", status=429, retry_after=30)
    [finding] = await api_calls(_source(sandbox), probes=3)
    assert finding.status is Status.WARN and finding.severity is Severity.P2
    assert finding.evidence["error_kind"] == "rate_limited"
    assert "Retry-After 30s" in finding.summary and "back off" in finding.summary


async def test_server_errors_everywhere_are_critical_and_intermittent_ones_a_warning(sandbox):
    sandbox.fault("hms", status=503)
    [down] = await api_calls(_source(sandbox), probes=5)
    sandbox.fault("hms", status=500, times=1)
    [blip] = await api_calls(_source(sandbox), probes=5)
    sandbox.fault("hms", status=500, times=2)
    [often] = await api_calls(_source(sandbox), probes=5, failure_pct_p1=20)
    assert down.status is Status.CRITICAL and down.severity is Severity.P1
    assert down.evidence["error_kind"] == "server_error" and "HTTP 503" in down.summary
    assert blip.status is Status.WARN and blip.severity is Severity.P2
    assert blip.evidence["failure_pct"] == 20.0 and "intermittently" in blip.summary
    assert often.status is Status.WARN and often.severity is Severity.P1


async def test_timeouts_are_their_own_kind(sandbox):
    sandbox.fault("hms", delay=1.0)
    [finding] = await api_calls(_source(sandbox, timeout=0.3), probes=2)
    assert finding.status is Status.CRITICAL and finding.evidence["error_kind"] == "timeout"
    assert finding.evidence["counts"] == {"timeout": 2}
    assert "timed out after 0.3s" in finding.summary


async def test_slow_answers_warn(sandbox):
    sandbox.fault("hms", delay=0.2)
    [finding] = await api_calls(_source(sandbox), probes=2, latency_warn_ms=100)
    assert finding.status is Status.WARN and finding.severity is Severity.P2
    assert finding.evidence["median_latency_ms"] >= 200


async def test_unreachable_api_is_an_error_finding():
    with SaasSandbox() as gone:
        target = gone.hms_target()
    [finding] = await timed("api_calls", "100ms", lambda: api_calls(TokenSource(target)))
    assert finding.status is Status.ERROR and finding.unreachable


# -- rooms against the limit -------------------------------------------------------------------


async def test_room_usage_against_the_limit(sandbox):
    sandbox.hms_activate(4, peers=2)
    [fine] = await room_usage(_source(sandbox))
    [near] = await room_usage(_source(sandbox, room_limit=5), warn_pct=80)
    [full] = await room_usage(_source(sandbox, room_limit=4))
    assert fine.status is Status.OK and fine.evidence["limit"] == 100
    assert fine.evidence["active_rooms"] == 4 and fine.evidence["active_peers"] == 8
    assert near.status is Status.WARN and near.evidence["utilisation_pct"] == 80.0
    assert full.status is Status.CRITICAL and full.severity is Severity.P1
    assert "upgrade the 100ms plan" in full.summary and "session limits" in full.summary


# -- status page and recent deploys ------------------------------------------------------------


async def test_hms_status_page_down_is_p1_and_degraded_p2(sandbox):
    page = sandbox.status_page("100ms")
    async with StatuspagePublic(page) as public:
        sandbox.set_provider("down")
        [down] = await hms_status_page(public, dependents=["video"])
        sandbox.set_provider("degraded")
        [degraded] = await hms_status_page(public, dependents=["video"])
    assert (down.check, down.status, down.severity) == ("hms_status_page", "critical", "P1")
    assert (degraded.status, degraded.severity) == (Status.WARN, Severity.P2)


async def test_recent_image_change_is_listed_with_the_rollback_runbook(kube, reader):
    [finding] = await recent_deploys(reader, window_s=3600)
    change = finding.evidence["recent_change"]
    assert finding.status is Status.OK
    assert change["images"] == ["video-api:1.4.2"]
    assert change["previous_images"] == ["video-api:1.4.1"]
    assert 1100 < change["age_s"] < 1300  # seeded 20 minutes ago
    assert "`rollback` runbook" in finding.summary


async def test_a_restart_or_an_old_deploy_is_not_a_recent_change():
    with KubeApiServer() as kube:
        kube.seed_deployment("api", ["api:1", "api:2"], deployed_ago=timedelta(days=1))
        target = KubernetesTarget(deployment="api", api_url=kube.url)
        with KubernetesOperator(target) as op:
            op.rollout_restart("api")
        with KubernetesReader(target) as reader:
            [finding] = await recent_deploys(reader, window_s=3600)
    assert "recent_change" not in finding.evidence
    assert finding.summary == "No image change of deployment default/api in the last 60 min."
    [restart] = [c for c in finding.evidence["changes"] if c["current"]]
    assert restart["image_changed"] is False


async def test_docker_container_recreated_with_another_image_is_a_recent_change():
    with DockerApiServer() as engine:
        for ref in ("video-api:1.4.1", "video-api:1.4.2"):
            engine.add_image(ref)
        label = {"org.oncall-runbooks.previous-image": "video-api:1.4.1"}
        engine.add_container("video-api", "video-api:1.4.2", labels=label)
        with DockerReader(DockerTarget(base_url=engine.base_url, container="video-api")) as r:
            [finding] = await recent_deploys(r, window_s=600)
    assert finding.evidence["recent_change"]["previous_images"] == ["video-api:1.4.1"]
    assert finding.summary.startswith("container video-api changed image video-api:1.4.1 →")


async def test_token_source_reads_the_exact_value_and_never_shows_it(sandbox, kube, reader):
    token = sandbox.management_token()
    kube.seed_secret(SECRET_NAME, {KEY: token})
    source = _source(sandbox, reader)
    value = await source.read()
    target = await source.target()
    assert value.get_secret_value() == token
    assert target.management_token.get_secret_value() == token
    for text in (repr(source), str(value), repr(target), source.where):
        assert token not in text
