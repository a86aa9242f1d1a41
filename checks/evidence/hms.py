"""What the 100ms checks observed: the app's management token, the API's answers, room usage
and the app's recent image changes (seed 000 Part E Incident 2)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from checks.findings import Evidence

__all__ = [
    "ApiCallsEvidence",
    "ImageChange",
    "RecentDeploysEvidence",
    "RoomsEvidence",
    "TokenApp",
    "TokenEvidence",
]


class TokenApp(Evidence):
    """What reads the token: a deployment and its pods, or containers (else only ``kind``)."""

    kind: str = Field(description="kubernetes, docker, or where the token comes from")
    namespace: str | None = None
    deployment: str | None = None
    pods: list[str] = Field(default_factory=list)
    containers: list[str] = Field(default_factory=list)


class TokenEvidence(Evidence):
    """``management_token``: where the app reads its token and what the token says."""

    source: str = Field(description="kubernetes, docker, config or self-signed")
    where: str
    can_regenerate: bool = Field(description="An app access key and secret are configured")
    app: TokenApp | None = None
    expires_at: str | None = None
    seconds_left: float | None = None
    expired: bool = False
    expiring_soon: bool = False
    token_type: str | None = None
    access_key_matches: bool | None = Field(None, description="None: no access key configured")


class ApiCallsEvidence(Evidence):
    """``api_calls``: each probe's answer, counted by kind (ok, auth, rate_limited …)."""

    calls: list[dict[str, Any]]
    counts: dict[str, int]
    failed: int
    total: int
    failure_pct: float
    median_latency_ms: float | None = None
    max_latency_ms: float | None = None
    token_source: str
    error_kind: str | None = Field(None, description="The most frequent failure")


class RoomsEvidence(Evidence):
    """``room_usage``: concurrent active rooms against the workspace limit."""

    active_rooms: int
    active_peers: int
    limit: int
    utilisation_pct: float
    room_ids: list[str] = Field(default_factory=list, description="The first 20")


class ImageChange(Evidence):
    """One revision (Kubernetes) or the running container (Docker) and its images."""

    revision: int | None = None
    container: str | None = None
    images: list[str]
    previous_images: list[str] | None = None
    image_changed: bool
    at: str | None = None
    age_s: float | None = None
    current: bool = False
    change_cause: str | None = None


class RecentDeploysEvidence(Evidence):
    """``recent_deploys``: image changes in the window; the newest one in ``recent_change``."""

    where: str
    window_s: float
    changes: list[ImageChange]
    recent_change: ImageChange | None = None
