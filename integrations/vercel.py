"""Vercel: read deployments; promote a previous deployment back to production (rollback).

Sources:
- ``GET /v6/deployments?projectId=&target=production&limit=`` (``deployments[]`` with uid,
  url, created, state, readyState, target, meta.githubCommitSha/Message):
  https://vercel.com/docs/rest-api/deployments/list-deployments
- ``GET /v9/projects/{idOrName}`` (``targets.production.id`` is the live deployment):
  https://vercel.com/docs/rest-api/projects/find-a-project-by-id-or-name
- ``GET /v13/deployments/{idOrUrl}``: https://vercel.com/docs/rest-api/deployments/get-a-deployment-by-id-or-url
- ``POST /v10/projects/{projectId}/promote/{deploymentId}`` (201/202, no rebuild):
  https://vercel.com/docs/rest-api/projects/point-production-traffic-to-a-given-deployment
Every call takes ``teamId`` when the project belongs to a team; auth is a bearer token.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import BaseModel, Field, SecretStr

from integrations.errors import ConfigError, NotFound
from integrations.http import TargetClient, backoff_field, retries_field, timeout_field
from integrations.preflight import probe_in_turn

__all__ = ["Deployment", "PromotePlan", "VercelClient", "VercelOperator", "VercelTarget"]

API_URL = "https://api.vercel.com"


class VercelTarget(BaseModel):
    """One Vercel project; the access token is a secret."""

    name: str = Field(default="vercel", description="Short name shown in reports")
    token: SecretStr = Field(description="Vercel access token")
    project: str = Field(description="Project id (prj_…) or name")
    team_id: str | None = Field(default=None, description="Team id when the project is a team's")
    base_url: str = Field(default=API_URL, description="REST API base URL")
    timeout: float = timeout_field()
    retries: int = retries_field()
    backoff: float = backoff_field()


class Deployment(BaseModel):
    """One deployment as the list/get endpoints describe it."""

    uid: str
    url: str | None = None
    created: datetime | None = None
    state: str | None = None
    target: str | None = None
    commit_sha: str | None = None
    commit_message: str | None = None
    commit_ref: str | None = None

    @classmethod
    def from_api(cls, doc: dict[str, Any]) -> Deployment:
        """Reads either the v6 list item (uid, created) or the v13 object (id, createdAt)."""
        meta = doc.get("meta") or {}
        millis = doc.get("created") or doc.get("createdAt")
        return cls(
            uid=str(doc.get("uid") or doc.get("id")),
            url=doc.get("url"),
            created=datetime.fromtimestamp(millis / 1000, UTC) if millis else None,
            state=doc.get("readyState") or doc.get("state"),
            target=doc.get("target"),
            commit_sha=meta.get("githubCommitSha") or meta.get("gitlabCommitSha"),
            commit_message=meta.get("githubCommitMessage") or meta.get("gitlabCommitMessage"),
            commit_ref=meta.get("githubCommitRef") or meta.get("gitlabCommitRef"),
        )

    @property
    def label(self) -> str:
        created = self.created.strftime("%Y-%m-%d %H:%M UTC") if self.created else "unknown time"
        commit = (self.commit_sha or "no commit")[:7]
        message = f" '{self.commit_message.splitlines()[0][:60]}'" if self.commit_message else ""
        return f"{self.uid} (created {created}, commit {commit}{message})"


class PromotePlan(BaseModel):
    """What a promote will change: production moves from one deployment to another."""

    project_id: str
    current: Deployment | None
    candidate: Deployment
    already_current: bool

    @property
    def text(self) -> str:
        if self.already_current:
            return f"{self.candidate.label} is already the production deployment"
        source = self.current.label if self.current else "no current production deployment"
        return f"production moves from {source} to {self.candidate.label}"


class VercelClient(TargetClient[VercelTarget]):
    """Read-only Vercel client for one project. ``async with VercelClient(target) as v``."""

    _shown = ("project",)
    _project_id: str | None = None  # resolved once per client, on first use

    def _open(self) -> httpx.AsyncClient:
        token = self.target.token.get_secret_value()
        return self._async_client(self.target.base_url, {"Authorization": f"Bearer {token}"})

    async def _call(self, method: str, path: str, params: dict[str, Any] | None = None) -> Any:
        query = dict(params or {})
        if self.target.team_id:
            query["teamId"] = self.target.team_id
        secrets = [self.target.token.get_secret_value()]
        response = await self._send_to_target(method, path, secrets=secrets, params=query)
        return response.json() if response.content else {}

    async def project(self) -> dict[str, Any]:
        """The project object (id, name, targets.production ...)."""
        doc = await self._call("GET", f"/v9/projects/{self.target.project}")
        self._project_id = str(doc.get("id") or self.target.project)
        return doc

    async def project_id(self) -> str:
        """The project's id, looked up once when the target names the project."""
        if self._project_id is None:
            if self.target.project.startswith("prj_"):
                self._project_id = self.target.project
            else:
                await self.project()
        return self._project_id or self.target.project

    async def deployments(
        self, limit: int = 10, target: str | None = "production", state: str | None = None
    ) -> list[Deployment]:
        """Recent deployments of the project, newest first."""
        params: dict[str, Any] = {"projectId": await self.project_id(), "limit": limit}
        if target:
            params["target"] = target
        if state:
            params["state"] = state
        doc = await self._call("GET", "/v6/deployments", params)
        return [Deployment.from_api(d) for d in doc.get("deployments") or []]

    async def deployment(self, deployment_id: str) -> Deployment:
        """One deployment by id or URL."""
        return Deployment.from_api(await self._call("GET", f"/v13/deployments/{deployment_id}"))

    async def current_production(self) -> Deployment | None:
        """The deployment production traffic points at now."""
        live = ((await self.project()).get("targets") or {}).get("production") or {}
        if live.get("id"):
            return Deployment.from_api(live)
        # Older projects lack targets; the newest READY production deployment is live then.
        ready = await self.deployments(limit=1, state="READY")
        return ready[0] if ready else None

    async def preflight(self) -> dict[str, bool | str]:
        """Checks the token can read the project and list its deployments."""
        return await probe_in_turn(
            {"project": self.project, "deployments": lambda: self.deployments(limit=1)}
        )


class VercelOperator(VercelClient):
    """Promotes deployments; built only inside an approved rollback."""

    async def preview_promote(self, deployment_id: str) -> PromotePlan:
        """Shows which deployment production leaves and which it lands on."""
        project = await self.project()
        candidate = await self.deployment(deployment_id)
        live = (project.get("targets") or {}).get("production") or {}
        current = Deployment.from_api(live) if live.get("id") else await self.current_production()
        return PromotePlan(
            project_id=str(project.get("id") or self.target.project),
            current=current,
            candidate=candidate,
            already_current=current is not None and current.uid == candidate.uid,
        )

    async def promote(self, deployment_id: str) -> str:
        """Points all production domains at ``deployment_id`` without a rebuild.

        Blast radius: every production domain and alias of the project serves the
        promoted deployment within seconds; undo by promoting the previous one.
        """
        plan = await self.preview_promote(deployment_id)
        if plan.already_current:
            return plan.text
        if plan.candidate.state not in (None, "READY"):
            raise ConfigError(f"cannot promote {plan.candidate.uid}: it is {plan.candidate.state}")
        try:
            await self._call("POST", f"/v10/projects/{plan.project_id}/promote/{deployment_id}")
        except NotFound as exc:
            raise NotFound(
                f"{self.target.name}: deployment {deployment_id} not found in project "
                f"{plan.project_id}",
                target=self.target.name,
                status=404,
            ) from exc
        return f"promoted to production: {plan.text}"
