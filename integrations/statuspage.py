"""Statuspage.io: read any provider's public page; write incidents on our own page.

Sources:
- public page API v2 (``/api/v2/status.json``, ``components.json``,
  ``incidents/unresolved.json``, ``summary.json``; indicator none/minor/major/critical;
  component status operational/degraded_performance/partial_outage/major_outage):
  https://www.githubstatus.com/api (the same documented API on every Statuspage page)
- manage API v1 (``Authorization: OAuth <key>``, ``POST/PATCH /pages/{page_id}/incidents``
  with an ``{"incident": {...}}`` body, ``GET .../incidents/unresolved``):
  https://developer.statuspage.io/#tag/incidents
"""

from __future__ import annotations

from typing import Any, Literal

import httpx
from pydantic import BaseModel, Field, SecretStr

from integrations.errors import ConfigError, TargetError
from integrations.http import TargetClient, backoff_field, retries_field, timeout_field
from integrations.preflight import Shortfall, probe_in_turn, shortfall

__all__ = [
    "INCIDENT_STATUSES",
    "Component",
    "IncidentSummary",
    "ProviderStatus",
    "StatuspageIncidents",
    "StatuspageManage",
    "StatuspageManageTarget",
    "StatuspagePage",
    "StatuspagePublic",
]

MANAGE_URL = "https://api.statuspage.io/v1"
INCIDENT_STATUSES = ("investigating", "identified", "monitoring", "resolved")
Impact = Literal["none", "minor", "major", "critical"]


class StatuspagePage(BaseModel):
    """A public Statuspage page, e.g. https://status.100ms.live."""

    name: str = Field(description="Provider name shown in reports")
    url: str = Field(description="Page base URL, without /api/v2")
    timeout: float = timeout_field()
    retries: int = retries_field()
    backoff: float = backoff_field()


class Component(BaseModel):
    """One component and its status."""

    name: str
    status: str


class IncidentSummary(BaseModel):
    """An unresolved incident and what it last said."""

    id: str
    name: str
    status: str
    impact: str = "none"
    shortlink: str | None = None
    started_at: str | None = None
    latest_update: str | None = None
    latest_update_at: str | None = None


class ProviderStatus(BaseModel):
    """A provider's state as its status page reports it."""

    name: str
    page_url: str
    indicator: str = Field(description="none, minor, major or critical")
    description: str
    degraded_components: list[Component] = Field(default_factory=list)
    incidents: list[IncidentSummary] = Field(default_factory=list)
    updated_at: str | None = None

    @property
    def healthy(self) -> bool:
        return self.indicator == "none" and not self.degraded_components and not self.incidents

    @property
    def sentence(self) -> str:
        parts = [f"{self.name}: {self.description} (indicator {self.indicator})"]
        if self.degraded_components:
            parts.append(
                "degraded: " + ", ".join(f"{c.name} {c.status}" for c in self.degraded_components)
            )
        parts += [f"incident '{i.name}' {i.status}" for i in self.incidents]
        return "; ".join(parts)


def _incident(doc: dict[str, Any]) -> IncidentSummary:
    updates = list(enumerate(doc.get("incident_updates") or []))
    none: dict[str, Any] = {}
    # Newest by time; on a tie the earlier list entry wins, as Statuspage lists newest first.
    _, last = max(
        updates,
        key=lambda item: (item[1].get("display_at") or item[1].get("created_at") or "", -item[0]),
        default=(0, none),
    )
    return IncidentSummary(
        id=str(doc.get("id", "")),
        name=str(doc.get("name", "")),
        status=str(doc.get("status", "")),
        impact=str(doc.get("impact") or "none"),
        shortlink=doc.get("shortlink"),
        started_at=doc.get("started_at") or doc.get("created_at"),
        latest_update=last.get("body"),
        latest_update_at=last.get("display_at") or last.get("created_at"),
    )


class StatuspagePublic(TargetClient[StatuspagePage]):
    """Read-only client for a provider's public page. ``async with StatuspagePublic(page)``."""

    _shown = ("url",)

    @property
    def page(self) -> StatuspagePage:
        return self.target

    def _label(self) -> str:
        return f"{self.page.name} status page"

    def _open(self) -> httpx.AsyncClient:
        return self._async_client(self.page.url.rstrip("/") + "/api/v2")

    async def _get(self, path: str) -> dict[str, Any]:
        response = await self._send_to_target("GET", path)
        return response.json()

    async def status(self) -> dict[str, str]:
        """The page rollup: ``{"indicator": ..., "description": ...}``."""
        return (await self._get("/status.json"))["status"]

    async def components(self) -> list[Component]:
        """Every non-group component with its status."""
        docs = (await self._get("/components.json"))["components"]
        return [Component(name=c["name"], status=c["status"]) for c in docs if not c.get("group")]

    async def unresolved_incidents(self) -> list[IncidentSummary]:
        """Incidents still investigating, identified or monitoring."""
        return [_incident(i) for i in (await self._get("/incidents/unresolved.json"))["incidents"]]

    async def summary(self) -> ProviderStatus:
        """Status, degraded components and open incidents in one call (summary.json)."""
        doc = await self._get("/summary.json")
        components = [
            Component(name=c["name"], status=c["status"])
            for c in doc.get("components") or []
            if not c.get("group") and c.get("status") != "operational"
        ]
        return ProviderStatus(
            name=self.page.name,
            page_url=self.page.url,
            indicator=doc["status"]["indicator"],
            description=doc["status"]["description"],
            degraded_components=components,
            incidents=[_incident(i) for i in doc.get("incidents") or []],
            updated_at=(doc.get("page") or {}).get("updated_at"),
        )

    async def preflight(self) -> dict[str, bool | str]:
        """Checks the page answers status.json."""
        try:
            await self.status()
            return {"status_page": True}
        except TargetError as exc:
            return {"status_page": shortfall(exc)}
        except (KeyError, ValueError, TypeError) as exc:
            return {"status_page": Shortfall(f"not a Statuspage API answer ({exc})", "error")}


class StatuspageManageTarget(BaseModel):
    """Our own Statuspage page; the API key is a secret."""

    name: str = Field(default="statuspage", description="Short name shown in reports")
    api_key: SecretStr = Field(description="Statuspage API key (user profile > API info)")
    page_id: str = Field(description="Page id from the manage URL")
    base_url: str = Field(default=MANAGE_URL, description="Manage API base URL")
    timeout: float = timeout_field()
    retries: int = retries_field()
    backoff: float = backoff_field(1.0)


class StatuspageIncidents(TargetClient[StatuspageManageTarget]):
    """Reads our own page's open incidents through the manage API. Its public methods only
    read, so a check (did our users get the message?) may hold one; the writes are
    :class:`StatuspageManage`'s. ``async with StatuspageIncidents(target)``."""

    _shown = ("page_id",)

    def _open(self) -> httpx.AsyncClient:
        key = self.target.api_key.get_secret_value()
        return self._async_client(self.target.base_url, {"Authorization": f"OAuth {key}"})

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        key = self.target.api_key.get_secret_value()
        url = f"/pages/{self.target.page_id}{path}"
        response = await self._send_to_target(method, url, secrets=[key], json=body)
        return response.json()

    async def unresolved(self) -> list[IncidentSummary]:
        """Our page's open incidents."""
        return [_incident(doc) for doc in await self._call("GET", "/incidents/unresolved")]


class StatuspageManage(StatuspageIncidents):
    """Writes incidents on our page; built only inside approved communications."""

    async def create_incident(
        self,
        name: str,
        status: str = "investigating",
        body: str = "",
        component_ids: list[str] | None = None,
        impact_override: Impact | None = None,
        component_status: str = "major_outage",
    ) -> tuple[IncidentSummary, str]:
        """Opens an incident unless one with this name is already open; says which."""
        _check_status(status)
        for open_incident in await self.unresolved():
            if open_incident.name == name:
                return open_incident, f"incident '{name}' is already open ({open_incident.id})"
        incident: dict[str, Any] = {"name": name, "status": status, "body": body}
        if component_ids:
            incident["component_ids"] = component_ids
            incident["components"] = {cid: component_status for cid in component_ids}
        if impact_override:
            incident["impact_override"] = impact_override
        doc = await self._call("POST", "/incidents", {"incident": incident})
        created = _incident(doc)
        return created, f"opened incident '{name}' ({created.id}) as {status}"

    async def update_incident(self, incident_id: str, status: str, body: str) -> str:
        """Posts an update; when status and message are unchanged it says so and posts nothing."""
        _check_status(status)
        current = _incident(await self._call("GET", f"/incidents/{incident_id}"))
        if current.status == status and (current.latest_update or "") == body:
            return f"incident {incident_id} is already {status} with that message"
        if current.status == "resolved" and status == "resolved":
            return f"incident {incident_id} is already resolved"
        payload = {"incident": {"status": status, "body": body}}
        await self._call("PATCH", f"/incidents/{incident_id}", payload)
        if current.status == status:
            return f"posted an update on incident {incident_id}; status stays {status}"
        return f"moved incident {incident_id} from {current.status} to {status}"

    async def resolve_incident(self, incident_id: str, body: str) -> str:
        """Marks the incident resolved (components return to operational)."""
        return await self.update_incident(incident_id, "resolved", body)

    async def preflight(self) -> dict[str, bool | str]:
        """Checks the key can read the page and its incidents (safe reads of the manage API)."""
        return await probe_in_turn(
            {
                "page": lambda: self._call("GET", ""),
                "incidents": lambda: self._call("GET", "/incidents/unresolved"),
            }
        )


def _check_status(status: str) -> None:
    if status not in INCIDENT_STATUSES:
        raise ConfigError(f"incident status must be one of {', '.join(INCIDENT_STATUSES)}")
