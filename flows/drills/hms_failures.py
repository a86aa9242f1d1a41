"""Drill hms-failures: expire the app's 100ms management token, let the runbook roll a new one."""

from __future__ import annotations

from datetime import timedelta

from checks.findings import Severity
from flows.drills.play import Player, scenario
from flows.drills.scorecard import Scorecard

__all__ = ["drill"]


@scenario("hms-failures", Severity.P1, verify_timeout_seconds=10)
def drill(player: Player) -> Scorecard:
    """Expires the app's 100ms token in its Kubernetes secret; hms-failures must fix it."""
    from flows.drills.sandbox.kube_api import KubeApiServer
    from flows.drills.sandbox.saas import SaasSandbox
    from integrations.kubernetes import KubernetesTarget
    from integrations.service import Service

    params = player.params
    with SaasSandbox() as saas, KubeApiServer(namespace="video") as kube:
        image = "ghcr.io/acme/video-api:2.3.0"
        kube.seed_deployment("video-api", [image], replicas=2, deployed_ago=timedelta(days=2))
        # The fault: the token the app reads expired half an hour ago, so 100ms answers 401.
        expired = saas.management_token(ttl=-1800)
        kube.seed_secret(params.token_secret, {params.token_key: expired})
        player.inject(
            "[bold]Drill hms-failures[/bold]: local 100ms API and status page, local "
            "Kubernetes API with deployment video/video-api (2 pods); the management token "
            f"in secret {params.token_secret} expired 30 min ago, so 100ms answers 401."
        )
        service = Service(
            name="drill-video",
            hms=saas.hms_target(),
            kubernetes=KubernetesTarget(
                deployment="video-api", namespace="video", api_url=kube.url
            ),
        )
        return player.play(service)
