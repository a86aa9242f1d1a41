"""The Docker integration, driven through the real ``docker`` SDK against the local Docker
Engine API of tests/support/docker_api.py (a unix socket); assertions are on what the server
received and on the containers it holds afterwards."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import docker.errors
import pytest
import requests
from pydantic import SecretStr

from integrations.docker import (
    PREVIOUS_IMAGE,
    DockerOperator,
    DockerReader,
    DockerTarget,
    translate_error,
)
from integrations.errors import (
    AuthError,
    ConfigError,
    NotFound,
    ProviderError,
    RateLimited,
    Timeout,
    Unreachable,
)
from tests.support.docker_api import DockerApiServer

IMAGES = ["ghcr.io/acme/web:1.1", "ghcr.io/acme/web:1.2", "ghcr.io/acme/web:1.3"]
TOKEN = "hms-token-3b9f1e7a"  # an environment value that must never show up anywhere


@pytest.fixture
def engine() -> Iterator[DockerApiServer]:
    with DockerApiServer() as server:
        server.seed_compose_service("shop", "web", IMAGES, replicas=2, env={"HMS_TOKEN": TOKEN})
        yield server


@pytest.fixture
def target(engine: DockerApiServer) -> Callable[..., DockerTarget]:
    def make(**overrides: object) -> DockerTarget:
        fields = {"base_url": engine.base_url, "compose_project": "shop", "compose_service": "web"}
        return DockerTarget(**{**fields, **overrides})

    return make


@pytest.fixture
def reader(target: Callable[..., DockerTarget]) -> Iterator[DockerReader]:
    with DockerReader(target()) as client:
        yield client


@pytest.fixture
def operator(target: Callable[..., DockerTarget]) -> Iterator[DockerOperator]:
    with DockerOperator(target()) as client:
        yield client


def _names(engine: DockerApiServer) -> list[str]:
    return sorted(c["Name"].lstrip("/") for c in engine.containers())


# -- reads --------------------------------------------------------------------------------


def test_container_state_reports_oom_kill_and_image(
    reader: DockerReader, engine: DockerApiServer
) -> None:
    engine.oom_kill("shop-web-1", restarts=2, exited=True)

    info = reader.container("shop-web-1")

    assert (info.status, info.running, info.oom_killed, info.exit_code) == (
        "exited",
        False,
        True,
        137,
    )
    assert info.restart_count == 2 and info.finished_at is not None
    assert info.image == "ghcr.io/acme/web:1.3" and info.image_id.startswith("sha256:")
    assert (info.compose_project, info.compose_service, info.compose_number) == ("shop", "web", 1)
    assert info.memory_limit == 256 * 2**20
    assert "HMS_TOKEN" in info.env_keys and TOKEN not in info.model_dump_json()
    assert engine.requests[-1].path == "/containers/shop-web-1/json"


def test_requests_carry_the_negotiated_api_version(
    reader: DockerReader, engine: DockerApiServer
) -> None:
    reader.container("shop-web-2")

    assert engine.requests[0].path == "/version" and engine.requests[0].version is None
    assert engine.requests[-1].version == "1.47"


def test_without_a_name_the_services_first_running_container_is_used(
    reader: DockerReader, engine: DockerApiServer
) -> None:
    engine.oom_kill("shop-web-1", exited=True)

    assert reader.container().name == "shop-web-2"
    listing = next(r for r in engine.requests if r.path == "/containers/json")
    assert json.loads(listing.query["filters"]) == {
        "label": ["com.docker.compose.project=shop", "com.docker.compose.service=web"]
    }
    assert listing.query["all"] in ("1", "True", "true")


def test_stats_use_the_docker_cli_formulas(reader: DockerReader, engine: DockerApiServer) -> None:
    engine.set_usage("shop-web-1", memory=200 * 2**20, cpu_percent=37.5)

    stats = reader.stats("shop-web-1")

    assert stats.memory_usage == 200 * 2**20 and stats.memory_limit == 256 * 2**20
    assert stats.memory_percent == 78.12 and stats.cpu_percent == 37.5 and stats.pids == 12
    assert engine.requests[-1].query["stream"] in ("0", "False", "false")


def test_logs_are_demultiplexed_and_tailed(reader: DockerReader, engine: DockerApiServer) -> None:
    engine.set_logs("shop-web-1", ["GET /health 200", "GET /api 200"], ["panic: out of memory"])

    assert reader.logs("shop-web-1") == "GET /health 200\nGET /api 200\npanic: out of memory\n"
    assert reader.logs("shop-web-1", tail=1) == "panic: out of memory\n"
    sent = [r for r in engine.requests if r.path.endswith("/logs")][-1]
    assert sent.query == {
        "stderr": "1",
        "stdout": "1",
        "timestamps": "0",
        "follow": "0",
        "tail": "1",
    }


def test_image_history_lists_the_repository_newest_first(reader: DockerReader) -> None:
    history = reader.image_history("shop-web-1")

    assert [r.tags for r in history] == [[IMAGES[2]], [IMAGES[1]], [IMAGES[0]]]
    assert [r.current for r in history] == [True, False, False]
    assert history[0].containers == ["shop-web-1", "shop-web-2"] and history[1].containers == []
    assert reader.previous_image("shop-web-1") == IMAGES[1]
    layers = reader.image_layers(IMAGES[1])
    assert layers[0].tags == [IMAGES[1]] and layers[-1].created < layers[0].created


def test_service_containers_are_ordered_by_container_number(reader: DockerReader) -> None:
    members = reader.service_containers()

    assert [(m.name, m.compose_number) for m in members] == [("shop-web-1", 1), ("shop-web-2", 2)]


# -- restart ------------------------------------------------------------------------------


def test_restart_restarts_once(operator: DockerOperator, engine: DockerApiServer) -> None:
    before = engine.container("shop-web-1")["State"]["StartedAt"]
    asked_at = datetime.now(UTC)  # the seeded container started just before

    sentence = operator.restart("shop-web-1", not_before=asked_at)
    again = operator.restart("shop-web-1", not_before=asked_at)

    assert [(w.method, w.path, w.query) for w in engine.writes()] == [
        ("POST", "/containers/shop-web-1/restart", {"t": "10"})
    ]
    assert engine.container("shop-web-1")["State"]["StartedAt"] > before
    assert sentence == "restarted container shop-web-1 (was running); now running, health healthy"
    assert again.startswith("container shop-web-1 was already restarted at ")


# -- recreate with another image ----------------------------------------------------------


def test_recreate_with_image_rolls_the_container_back(
    operator: DockerOperator, engine: DockerApiServer
) -> None:
    old = engine.container("shop-web-1")

    sentence = operator.recreate_with_image("shop-web-1", IMAGES[1])

    writes = engine.writes()
    assert [(w.method, w.path.replace(old["Id"], "OLD")) for w in writes][:3] == [
        ("POST", "/containers/OLD/stop"),
        ("POST", "/containers/OLD/rename"),
        ("POST", "/containers/create"),
    ]
    assert writes[1].query == {"name": f"shop-web-1-replaced-{old['Id'][:12]}"}
    assert writes[3].path.endswith("/start") and (writes[4].method, writes[4].path) == (
        "DELETE",
        f"/containers/{old['Id']}",
    )
    create = writes[2]
    assert create.query == {"name": "shop-web-1"} and create.body["Image"] == IMAGES[1]
    assert create.body["HostConfig"]["Memory"] == 256 * 2**20
    assert create.body["NetworkingConfig"]["EndpointsConfig"]["shop_default"]["Aliases"] == [
        "shop-web-1",
        "web",
    ]
    assert f"HMS_TOKEN={TOKEN}" in create.body["Env"]
    assert not any(e.startswith("APP_VERSION=") for e in create.body["Env"])  # the new image's own
    new = engine.container("shop-web-1")
    assert (
        new["Id"] != old["Id"] and new["State"]["Running"] and new["Config"]["Image"] == IMAGES[1]
    )
    assert (
        "APP_VERSION=1.2" in new["Config"]["Env"]
        and new["Config"]["Labels"][PREVIOUS_IMAGE] == IMAGES[2]
    )
    assert new["Config"]["Labels"]["com.docker.compose.container-number"] == "1"
    assert _names(engine) == ["shop-web-1", "shop-web-2"]
    assert sentence == (
        f"recreated container shop-web-1 with image {IMAGES[1]} (was {IMAGES[2]}); "
        "the old container was removed"
    )


def test_recreate_with_the_current_image_does_nothing(
    operator: DockerOperator, engine: DockerApiServer
) -> None:
    assert (
        operator.recreate_with_image("shop-web-1", IMAGES[2])
        == f"container shop-web-1 already runs {IMAGES[2]}"
    )
    assert engine.writes() == []


def test_recreate_with_a_missing_image_changes_nothing(
    operator: DockerOperator, engine: DockerApiServer
) -> None:
    with pytest.raises(NotFound, match="No such image: ghcr.io/acme/web:9.9"):
        operator.recreate_with_image("shop-web-1", "ghcr.io/acme/web:9.9")
    assert engine.writes() == []


def test_a_failed_create_puts_the_old_container_back(
    operator: DockerOperator, engine: DockerApiServer
) -> None:
    old = engine.container("shop-web-1")
    engine.fail_next("POST", "/containers/create", code=500)

    with pytest.raises(ProviderError) as caught:
        operator.recreate_with_image("shop-web-1", IMAGES[1])

    assert caught.value.status == 500
    back = engine.container("shop-web-1")
    assert (
        back["Id"] == old["Id"]
        and back["State"]["Running"]
        and back["Config"]["Image"] == IMAGES[2]
    )
    assert [w.path.rsplit("/", 1)[-1] for w in engine.writes()] == [
        "stop",
        "rename",
        "create",
        "rename",
        "start",
    ]
    assert engine.writes()[3].query == {"name": "shop-web-1"}


def test_preview_recreate_names_both_images_and_changes_nothing(
    operator: DockerOperator, engine: DockerApiServer
) -> None:
    preview = operator.preview_recreate("shop-web-1", IMAGES[1])

    assert preview.before["image"] == IMAGES[2] and preview.after["image"] == IMAGES[1]
    assert preview.touches == ["shop-web-1"] and not preview.noop
    assert engine.writes() == []


# -- environment --------------------------------------------------------------------------


def test_set_env_and_recreate_rolls_a_new_token_in_without_showing_it(
    operator: DockerOperator, engine: DockerApiServer
) -> None:
    new_token = SecretStr("hms-token-NEW-9c2d")

    preview = operator.preview_env("shop-web-2", {"HMS_TOKEN": new_token})
    sentence = operator.set_env_and_recreate("shop-web-2", {"HMS_TOKEN": new_token})
    again = operator.set_env_and_recreate("shop-web-2", {"HMS_TOKEN": new_token})

    env = engine.container("shop-web-2")["Config"]["Env"]
    assert "HMS_TOKEN=hms-token-NEW-9c2d" in env and f"HMS_TOKEN={TOKEN}" not in env
    assert engine.container("shop-web-2")["Config"]["Image"] == IMAGES[2]
    assert (
        sentence
        == "recreated container shop-web-2 with new values for HMS_TOKEN (values not shown)"
    )
    assert again == "container shop-web-2 already has those values for HMS_TOKEN"
    assert preview.after == {"keys_changed": ["HMS_TOKEN"]}
    for text in (sentence, again, repr(preview), repr(operator)):
        assert "hms-token-NEW-9c2d" not in text and TOKEN not in text
    assert len([w for w in engine.writes() if w.path == "/containers/create"]) == 1


# -- scale --------------------------------------------------------------------------------


def test_scale_service_up_down_and_idempotent(
    operator: DockerOperator, engine: DockerApiServer
) -> None:
    up = operator.scale_service("shop", "web", 4)
    same = operator.scale_service("shop", "web", 4)

    created = [w for w in engine.writes() if w.path == "/containers/create"]
    assert [w.query["name"] for w in created] == ["shop-web-3", "shop-web-4"]
    assert created[0].body["Labels"]["com.docker.compose.container-number"] == "3"
    assert created[0].body["NetworkingConfig"]["EndpointsConfig"]["shop_default"]["Aliases"] == [
        "shop-web-3",
        "web",
    ]
    assert _names(engine) == ["shop-web-1", "shop-web-2", "shop-web-3", "shop-web-4"]
    assert all(c["State"]["Running"] for c in engine.containers())
    assert (
        up == "scaled compose service shop/web from 2 to 4 running containers "
        "(created shop-web-3, shop-web-4)"
    )
    assert same == "compose service shop/web is already at 4 containers"

    down = operator.scale_service("shop", "web", 1)

    assert _names(engine) == ["shop-web-1"]
    assert down == "scaled compose service shop/web from 4 to 1 running containers"


def test_scale_refuses_a_service_with_fixed_host_ports(
    operator: DockerOperator, engine: DockerApiServer
) -> None:
    engine.add_image("nginx:1.27")
    labels = {
        "com.docker.compose.project": "edge",
        "com.docker.compose.service": "proxy",
        "com.docker.compose.container-number": "1",
    }
    engine.add_container("edge-proxy-1", "nginx:1.27", labels=labels, host_ports={"80/tcp": 80})

    with pytest.raises(ConfigError, match="publishes fixed host ports"):
        operator.scale_service("edge", "proxy", 2)
    assert engine.writes() == []


# -- errors and preflight -----------------------------------------------------------------


def test_a_daemon_that_is_down_is_unreachable(tmp_path: os.PathLike[str]) -> None:
    target = DockerTarget(base_url=f"unix://{tmp_path}/missing.sock", container="web", timeout=2)

    with (
        DockerReader(target) as reader,
        pytest.raises(Unreachable, match="cannot connect to the Docker daemon"),
    ):
        reader.container()


def test_a_missing_container_is_not_found(reader: DockerReader) -> None:
    with pytest.raises(NotFound, match="No such container: nope") as caught:
        reader.container("nope")
    assert caught.value.status == 404


def test_an_authorization_plugin_refusal_is_an_auth_error(
    operator: DockerOperator, engine: DockerApiServer
) -> None:
    engine.deny("POST", "/restart")

    with pytest.raises(AuthError, match="authorization denied by plugin") as caught:
        operator.restart("shop-web-1")
    assert caught.value.status == 403


async def test_preflight_reports_each_capability(
    target: Callable[..., DockerTarget], tmp_path: os.PathLike[str]
) -> None:
    with (
        DockerReader(target()) as good,
        DockerReader(target(base_url=f"unix://{tmp_path}/x.sock")) as bad,
    ):
        ok, down = await good.preflight(), await bad.preflight()
    with DockerOperator(target(container="nope")) as operator:
        writes = await operator.preflight()

    assert ok == {"ping": True, "list_containers": True, "inspect_container": True}
    assert all(isinstance(v, str) and "cannot connect" in v for v in down.values())
    assert writes["ping"] is True and "No such container: nope" in str(writes["inspect_container"])


def _api_error(code: int, explanation: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = code
    return docker.errors.APIError(
        f"{code} Client Error", response=response, explanation=explanation
    )


def _wrapped(cause: Exception) -> docker.errors.DockerException:
    try:
        raise docker.errors.DockerException(
            f"Error while fetching server API version: {cause}"
        ) from cause
    except docker.errors.DockerException as exc:
        return exc


@pytest.mark.parametrize(
    ("error", "expected", "status"),
    [
        (_api_error(403, "authorization denied by plugin"), AuthError, 403),
        (_api_error(404, "No such container: web"), NotFound, 404),
        (_api_error(409, "container is running"), ProviderError, 409),
        (_api_error(429, "toomanyrequests"), RateLimited, 429),
        (_api_error(500, "driver failed"), ProviderError, 500),
        (requests.exceptions.ConnectionError("refused"), Unreachable, None),
        (requests.exceptions.ReadTimeout("read timed out"), Timeout, None),
        (_wrapped(requests.exceptions.ConnectionError("No such file")), Unreachable, None),
        (docker.errors.TLSParameterError("bad cert path"), ConfigError, None),
        (docker.errors.DockerException("something else"), ProviderError, None),
    ],
)
def test_every_sdk_error_maps_to_our_tree(
    error: Exception, expected: type, status: int | None
) -> None:
    mapped = translate_error(error, "docker web", "inspect container web")

    assert type(mapped) is expected
    assert str(mapped).startswith("docker web: inspect container web")
    assert getattr(mapped, "status", None) == status
