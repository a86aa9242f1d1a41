"""The routes of :class:`flows.drills.sandbox.saas.SaasSandbox`: each service's documented API.

Shapes follow the docs cited in ``integrations/<tool>.py`` and next to each route group.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

# The sandbox these routes serve (flows.drills.sandbox.saas.SaasSandbox, which imports this
# module: naming it here would make the two import each other).
SaasSandbox = Any

__all__ = ["add_routes", "error_answer", "now_iso"]


def now_iso() -> str:
    """Returns the current UTC time in ISO 8601, as the APIs write it."""
    return datetime.now(UTC).isoformat()


def error_answer(status: int, message: str) -> JSONResponse:
    """Returns a JSON error answer carrying ``message`` as both ``error`` and ``message``."""
    return JSONResponse({"error": message, "message": message}, status_code=status)


def add_routes(app: FastAPI, sb: SaasSandbox) -> None:
    """Adds every service's routes to ``app``, serving the state held by ``sb``."""
    _slack_routes(app, sb)
    _pagerduty_routes(app, sb)
    _statuspage_routes(app, sb)
    _hms_routes(app, sb)
    _vercel_routes(app, sb)


def _slack_routes(app: FastAPI, sb: SaasSandbox) -> None:
    # https://api.slack.com/messaging/webhooks#handling_errors: plain-text "ok" / error codes.
    @app.post("/services/{rest:path}")
    @app.post("/actions/{rest:path}")
    async def webhook(rest: str, request: Request) -> Response:
        if request.url.path.startswith("/services/") and request.url.path != sb.slack_path:
            return PlainTextResponse("no_service", status_code=404)
        try:
            message = await request.json()
        except ValueError:
            return PlainTextResponse("invalid_payload", status_code=400)
        if not isinstance(message, dict) or not (message.get("text") or message.get("blocks")):
            return PlainTextResponse("no_text", status_code=400)
        sb.slack_messages.append(message)
        return PlainTextResponse("ok")


def _pagerduty_routes(app: FastAPI, sb: SaasSandbox) -> None:
    @app.post("/v2/enqueue")
    async def enqueue(request: Request) -> Response:
        try:
            event = await request.json()
        except ValueError:
            event = None
        errors = _pd_errors(event if isinstance(event, dict) else {}, sb.pd_routing_key)
        if errors:
            body = {"status": "invalid event", "message": "Event object is invalid"}
            return JSONResponse({**body, "errors": errors}, status_code=400)
        key = event.get("dedup_key") or uuid.uuid4().hex
        action = event["event_action"]
        if action == "trigger":
            sb.pd_alerts[key] = {"status": "triggered", **event["payload"]}
        elif key in sb.pd_alerts and sb.pd_alerts[key]["status"] != "resolved":
            sb.pd_alerts[key]["status"] = "acknowledged" if action == "acknowledge" else "resolved"
        body = {"status": "success", "message": "Event processed", "dedup_key": key}
        return JSONResponse(body, status_code=202)


def _pd_errors(event: dict[str, Any], routing_key: str) -> list[str]:
    # Messages as in https://developer.pagerduty.com/docs/events-api-v2/overview/ examples.
    key, action = event.get("routing_key"), event.get("event_action")
    if not isinstance(key, str) or len(key) != 32:
        return ["Length of 'routing_key' is incorrect (should be 32 characters)"]
    if key != routing_key:
        return ["Invalid routing key"]
    if action not in ("trigger", "acknowledge", "resolve"):
        return ["'event_action' is invalid (must be one of: trigger, acknowledge, resolve)"]
    if action != "trigger":
        return [] if event.get("dedup_key") else ["'dedup_key' is missing or blank"]
    payload = event.get("payload")
    payload = payload if isinstance(payload, dict) else {}
    errors = [
        f"'payload.{f}' is missing or blank" for f in ("summary", "source") if not payload.get(f)
    ]
    if payload.get("severity") not in ("critical", "error", "warning", "info"):
        errors.append(
            "'payload.severity' is invalid (must be one of: critical, error, warning, info)"
        )
    return errors


def _statuspage_routes(app: FastAPI, sb: SaasSandbox) -> None:
    # https://developer.statuspage.io/#tag/incidents and the public /api/v2 endpoints.
    def update(incident: dict[str, Any], status: str, body: str) -> None:
        now = now_iso()
        incident.update(status=status, updated_at=now)
        if status == "resolved":
            incident["resolved_at"] = now
        new = dict(id=uuid.uuid4().hex[:12], incident_id=incident["id"], status=status, body=body)
        new |= dict(created_at=now, display_at=now, updated_at=now)
        incident["incident_updates"].insert(0, new)
        for component in sb.components:
            if component["id"] in incident["component_ids"]:
                component["status"] = "operational" if status == "resolved" else incident["cstatus"]

    @app.get("/v1/pages/{page_id}")
    async def page(page_id: str) -> Any:
        return sb._page()

    @app.get("/v1/pages/{page_id}/incidents/unresolved")
    async def unresolved(page_id: str) -> Any:
        return [i for i in sb.incidents.values() if i["status"] != "resolved"]

    @app.post("/v1/pages/{page_id}/incidents")
    async def create(page_id: str, request: Request) -> Any:
        spec = (await request.json()).get("incident") or {}
        if not spec.get("name"):
            return error_answer(422, "Name can't be blank")
        now, iid = now_iso(), uuid.uuid4().hex[:12]
        components = spec.get("components") or {}
        override = spec.get("impact_override")
        incident = dict(id=iid, page_id=page_id, name=spec["name"], status="", resolved_at=None)
        incident |= dict(impact=override or "minor", impact_override=override, created_at=now)
        incident |= dict(started_at=now, shortlink=f"{sb.url}/i/{iid}", incident_updates=[])
        incident["component_ids"] = spec.get("component_ids") or list(components)
        incident["cstatus"] = next(iter(components.values()), "major_outage")
        update(incident, spec.get("status") or "investigating", spec.get("body") or "")
        sb.incidents[iid] = incident
        return JSONResponse(incident, status_code=201)

    @app.get("/v1/pages/{page_id}/incidents/{incident_id}")
    async def read(page_id: str, incident_id: str) -> Any:
        return sb.incidents.get(incident_id) or error_answer(404, "Incident not found")

    @app.patch("/v1/pages/{page_id}/incidents/{incident_id}")
    async def patch(page_id: str, incident_id: str, request: Request) -> Any:
        if incident_id not in sb.incidents:
            return error_answer(404, "Incident not found")
        spec = (await request.json()).get("incident") or {}
        incident = sb.incidents[incident_id]
        update(incident, spec.get("status") or incident["status"], spec.get("body") or "")
        return incident

    @app.get("/api/v2/status.json")
    async def status() -> Any:
        return {"page": sb._page(), "status": sb._status()}

    @app.get("/api/v2/components.json")
    async def components() -> Any:
        return {"page": sb._page(), "components": sb.components}

    @app.get("/api/v2/incidents/unresolved.json")
    async def public_unresolved() -> Any:
        return {"page": sb._page(), "incidents": sb._public_incidents()}

    @app.get("/api/v2/summary.json")
    async def summary() -> Any:
        return {
            "page": sb._page(),
            "status": sb._status(),
            "components": sb.components,
            "incidents": sb._public_incidents(),
            "scheduled_maintenances": [],
        }


def _hms_routes(app: FastAPI, sb: SaasSandbox) -> None:
    def page(items: list[dict[str, Any]], request: Request) -> dict[str, Any]:
        limit = int(request.query_params.get("limit", 10))
        start = request.query_params.get("start")
        ids = [item["id"] for item in items]
        offset = ids.index(start) + 1 if start in ids else 0
        data = items[offset : offset + limit]
        return {"limit": limit, "data": data, "last": data[-1]["id"] if data else None}

    @app.get("/v2/rooms")
    async def rooms(request: Request) -> Any:
        enabled = request.query_params.get("enabled")
        chosen = [r for r in sb.rooms if enabled is None or str(r["enabled"]).lower() == enabled]
        return page(chosen, request)

    @app.get("/v2/active-rooms/{room_id}")
    async def active_room(room_id: str) -> Any:
        room = next((r for r in sb.rooms if r["id"] == room_id), None)
        session = next((s for s in sb.sessions if s["room_id"] == room_id and s["active"]), None)
        if room is None or session is None:
            return JSONResponse({"code": 404, "message": "room not active"}, status_code=404)
        live = {
            "id": session["id"],
            "created_at": session["created_at"],
            "peers": list(session["peers"]),
        }
        return {"id": room_id, "name": room["name"], "customer_id": "sandbox", "session": live}

    @app.get("/v2/sessions")
    async def sessions(request: Request) -> Any:
        active = request.query_params.get("active")
        chosen = [s for s in sb.sessions if active is None or str(s["active"]).lower() == active]
        return page(chosen, request)


def _vercel_routes(app: FastAPI, sb: SaasSandbox) -> None:
    def missing(what: str) -> Response:
        return JSONResponse({"error": {"code": "not_found", "message": f"{what} not found"}}, 404)

    def project() -> dict[str, Any]:
        live = next(d for d in sb.deployments if d["uid"] == sb.production_id)
        target = {**live, "id": live["uid"]}
        return {"id": sb.vercel_project, "name": "sandbox-app", "targets": {"production": target}}

    @app.get("/v9/projects/{id_or_name}")
    async def get_project(id_or_name: str) -> Any:
        doc = project()
        return doc if id_or_name in (doc["id"], doc["name"]) else missing("Project")

    @app.get("/v6/deployments")
    async def deployments(request: Request) -> Any:
        q = request.query_params
        chosen = [
            d
            for d in sb.deployments
            if q.get("projectId") in (None, sb.vercel_project, "sandbox-app")
            and q.get("target") in (None, d["target"])
            and q.get("state") in (None, d["readyState"])
        ]
        chosen = chosen[: int(q.get("limit", 20))]
        return {
            "deployments": chosen,
            "pagination": {"count": len(chosen), "next": None, "prev": None},
        }

    @app.get("/v13/deployments/{id_or_url}")
    async def deployment(id_or_url: str) -> Any:
        found = next((d for d in sb.deployments if id_or_url in (d["uid"], d["url"])), None)
        return {**found, "id": found["uid"]} if found else missing("Deployment")

    @app.post("/v10/projects/{project_id}/promote/{deployment_id}")
    async def promote(project_id: str, deployment_id: str) -> Any:
        if project_id not in (sb.vercel_project, "sandbox-app"):
            return missing("Project")
        if not any(d["uid"] == deployment_id for d in sb.deployments):
            return missing("Deployment")
        sb.production_id = deployment_id
        return JSONResponse({}, status_code=201)
