"""Drill rollback: a deploy whose pods crash-loop takes the health endpoint down; roll it back."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from checks.findings import Severity
from flows.drills.play import Player, scenario
from flows.drills.sandbox.loopback import LoopbackServer, Served
from flows.drills.scorecard import Scorecard

__all__ = ["IMAGES", "HealthApp", "drill"]

IMAGES = ["ghcr.io/acme/api:1.4.0", "ghcr.io/acme/api:1.4.1", "ghcr.io/acme/api:1.4.2"]
TOKEN = "drill-kube-token"


class HealthApp(Served):
    """``GET /health``: 200 while the deployment has a ready pod, 503 otherwise.

    It stands for the service in front of the pods: with no ready endpoint behind it, the
    load balancer answers 503, as the seeds' "Application Down" describes.
    """

    def __init__(self, kube: Any, deployment: str, namespace: str | None = None) -> None:
        self.kube, self.deployment, self.namespace = kube, deployment, namespace
        self._server = LoopbackServer(self._answer)

    def status(self) -> tuple[int, dict[str, Any]]:
        """What ``/health`` answers now."""
        dep = self.kube.get("deployments", self.deployment, self.namespace)
        ready = dep.get("status", {}).get("readyReplicas", 0)
        images = [c["image"] for c in dep["spec"]["template"]["spec"]["containers"]]
        body = {"status": "ok" if ready else "unavailable", "ready": ready, "images": images}
        return (200 if ready else 503), body

    def _answer(self, method: str, path: str, headers: object, body: bytes) -> tuple[int, Any]:
        return self.status() if path == "/health" else (404, {"error": "no"})


@scenario("rollback", Severity.P1, lookback_minutes=30)
def drill(player: Player) -> Scorecard:
    """Deploys a crash-looping image to a local Kubernetes API and lets rollback undo it."""
    from pydantic import SecretStr

    from flows.drills.sandbox.kube_api import KubeApiServer
    from integrations.kubernetes import KubernetesTarget
    from integrations.service import HttpEndpoint, Service

    with KubeApiServer(token=TOKEN, namespace="prod") as kube, HealthApp(kube, "api") as health:
        kube.crashing_images.add(IMAGES[-1])
        kube.seed_deployment("api", IMAGES, replicas=3, deployed_ago=timedelta(0))
        player.inject()
        if player.show:  # /health asks the Kubernetes API: only when it is shown
            code, body = health.status()
            player.say(
                f"[bold]Drill rollback[/bold]: local Kubernetes API {kube.url}, deployment "
                f"prod/api; deployed {IMAGES[-1]} (crash-looping); /health answers {code} "
                f"({body['ready']} ready pods)."
            )
        target = KubernetesTarget(
            api_url=kube.url, token=SecretStr(TOKEN), namespace="prod", deployment="api"
        )
        service = Service(
            name="drill-api",
            kubernetes=target,
            http=[HttpEndpoint(name="health", url=f"{health.url}/health", timeout_s=2)],
        )
        return player.play(service)
