"""One local HTTP server speaking the documented APIs of the SaaS tools we cannot reach here.

Slack incoming webhook (``/services/…``), PagerDuty Events v2 (``/v2/enqueue``), Statuspage
manage API (``/v1/pages/…``) and a public Statuspage page (``/api/v2/…``), 100ms REST
(``/v2/rooms``, ``/v2/active-rooms``, ``/v2/sessions``; HS256 management JWTs checked with
the app secret) and Vercel (``/v6/deployments``, ``/v9/projects``, ``/v13/deployments``,
``/v10/projects/…/promote/…``). Shapes follow the docs cited in ``integrations/<tool>.py``.

It records every request (secrets stripped from headers) and has per-service fault
switches (status, Retry-After, delay, how many times). Drills use it at runtime; tests use
it as a context manager: ``with SaasSandbox() as sandbox: sandbox.url``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import jwt
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, SecretStr

from flows.drills.sandbox.saas_routes import add_routes, error_answer, now_iso
from integrations.hms import HmsTarget, management_token
from integrations.pagerduty import PagerDutyTarget
from integrations.slack import SlackWebhookTarget
from integrations.statuspage import StatuspageManageTarget, StatuspagePage
from integrations.vercel import VercelTarget

__all__ = ["Fault", "RecordedRequest", "SaasSandbox"]

Service = Literal["slack", "pagerduty", "statuspage", "status", "hms", "vercel"]
ProviderState = Literal["operational", "degraded", "down"]
_SECRET_HEADERS = {
    "authorization",
    "cookie",
    "x-slack-signature",
    "x-pagerduty-signature",
    "sentry-hook-signature",
}
_PREFIXES: list[tuple[str, Service]] = [
    ("/services/", "slack"),
    ("/actions/", "slack"),
    ("/v2/enqueue", "pagerduty"),
    ("/v1/pages", "statuspage"),
    ("/api/v2/", "status"),
    ("/v2/", "hms"),
    ("/v", "vercel"),
]
_PROVIDER = {
    "operational": ("none", "All Systems Operational", "operational"),
    "degraded": ("minor", "Partially Degraded Service", "degraded_performance"),
    "down": ("critical", "Major System Outage", "major_outage"),
}


class Fault(BaseModel):
    """A fault to inject on one service: answer ``status`` and/or wait ``delay`` seconds."""

    status: int | None = None
    delay: float = 0.0
    retry_after: float | None = None
    times: int | None = None


class RecordedRequest(BaseModel):
    """One request the sandbox received."""

    service: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any = None


class SaasSandbox:
    """The fake SaaS world: start/stop it, inject faults, inspect what it received."""

    # What it holds; reset() fills it.
    requests: list[RecordedRequest]
    faults: dict[str, Fault]
    slack_messages: list[dict[str, Any]]
    pd_alerts: dict[str, dict[str, Any]]
    incidents: dict[str, dict[str, Any]]
    provider_state: ProviderState
    components: list[dict[str, Any]]
    sessions: list[dict[str, Any]]
    deployments: list[dict[str, Any]]

    def __init__(
        self,
        *,
        slack_path: str = "/services/T0SANDBOX/B0SANDBOX/sandboxwebhooktoken",
        pd_routing_key: str = "R" * 32,
        statuspage_api_key: str = "sandbox-statuspage-key",
        page_id: str = "sandboxpage01",
        hms_access_key: str = "sandbox-access-key",
        hms_app_secret: str = "sandbox-app-secret-0123456789abcdef",
        vercel_token: str = "sandbox-vercel-token",
        vercel_project: str = "prj_sandbox",
    ) -> None:
        self.slack_path, self.pd_routing_key, self.page_id = slack_path, pd_routing_key, page_id
        self.statuspage_api_key, self.vercel_token = statuspage_api_key, vercel_token
        self.hms_access_key, self.hms_app_secret = hms_access_key, hms_app_secret
        self.vercel_project = vercel_project
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self.reset()

    # --- lifecycle -----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> SaasSandbox:
        """Serves on a free loopback port in a background thread; returns when listening."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Accepted sockets inherit this; without it Nagle adds ~40 ms to every answer.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(self._app(), log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("SaaS sandbox did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stops the server and waits for its thread."""
        if self._server is not None:
            self._server.should_exit = self._server.force_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> SaasSandbox:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- switches and inspection -----------------------------------------------------

    def fault(self, service: Service, **fault: Any) -> None:
        """Injects a fault on one service, e.g. ``fault("hms", status=429, retry_after=1)``."""
        with self._lock:
            self.faults[service] = Fault(**fault)

    def clear_faults(self) -> None:
        """Removes every injected fault."""
        with self._lock:
            self.faults.clear()

    def set_provider(self, state: ProviderState) -> None:
        """Makes the public status page report the provider operational, degraded or down."""
        self.provider_state = state
        for index, component in enumerate(self.components):
            # "degraded" hits the first component only; "down" takes every component out.
            hit = state != "degraded" or index == 0
            component["status"] = _PROVIDER[state][2] if hit else "operational"

    def received(self, service: Service | None = None) -> list[RecordedRequest]:
        """Requests received so far, optionally for one service."""
        with self._lock:
            return [r for r in self.requests if service is None or r.service == service]

    def hms_activate(self, rooms: int, peers: int = 2) -> None:
        """Puts ``rooms`` rooms into an active session with ``peers`` peers each."""
        with self._lock:
            self.sessions = [s for s in self.sessions if not s["active"]]
            for index in range(rooms):
                if index >= len(self.rooms):
                    self.rooms.append(self._room(index))
                sid = uuid.uuid4().hex[:24]
                ids = [f"peer-{index}-{p}" for p in range(peers)]
                peer = dict(session_id=sid, name="user", role="host", joined_at=now_iso())
                members = {pid: {"id": pid, **peer} for pid in ids}
                session = {"id": sid, "room_id": self.rooms[index]["id"], "active": True}
                self.sessions.append({**session, "peers": members, "created_at": now_iso()})

    def management_token(self, ttl: int = 86400, now: float | None = None) -> str:
        """A token signed with the sandbox app secret (negative ``ttl`` makes it expired)."""
        return management_token(self.hms_access_key, self.hms_app_secret, now=now, ttl=ttl)

    # --- ready-made targets pointing here --------------------------------------------

    def slack_target(self, **extra: Any) -> SlackWebhookTarget:
        extra.setdefault("webhook_url", SecretStr(self.url + self.slack_path))
        return SlackWebhookTarget(**extra)

    def pagerduty_target(self, **extra: Any) -> PagerDutyTarget:
        extra.setdefault("routing_key", SecretStr(self.pd_routing_key))
        return PagerDutyTarget(**{"base_url": self.url, **extra})

    def statuspage_target(self, **extra: Any) -> StatuspageManageTarget:
        extra.setdefault("api_key", SecretStr(self.statuspage_api_key))
        extra.setdefault("page_id", self.page_id)
        return StatuspageManageTarget(**{"base_url": self.url + "/v1", **extra})

    def status_page(self, name: str = "sandbox-provider", **extra: Any) -> StatuspagePage:
        return StatuspagePage(**{"name": name, "url": self.url, **extra})

    def hms_target(self, **extra: Any) -> HmsTarget:
        extra.setdefault("access_key", self.hms_access_key)
        if "management_token" not in extra:
            extra.setdefault("app_secret", SecretStr(self.hms_app_secret))
        return HmsTarget(**{"api_base": self.url + "/v2", "status_page": self.url, **extra})

    def vercel_target(self, **extra: Any) -> VercelTarget:
        extra.setdefault("project", self.vercel_project)
        extra.setdefault("token", SecretStr(self.vercel_token))
        return VercelTarget(**{"base_url": self.url, **extra})

    # --- state -------------------------------------------------------------------------

    def _room(self, index: int) -> dict[str, Any]:
        name, when = f"room-{index}", now_iso()
        return dict(id=f"room{index:020d}", name=name, enabled=True, region="in", created_at=when)

    def reset(self) -> None:
        """Forgets requests, faults and state: back to three idle rooms and three deploys."""
        with self._lock:
            self.requests = []
            self.faults = {}
            self.slack_messages = []
            self.pd_alerts = {}
            self.incidents = {}
            self.provider_state = "operational"
            self.components = [
                {"id": f"cmp{i}", "name": n, "status": "operational", "group": False}
                for i, n in enumerate(("API", "Video rooms", "Dashboard"))
            ]
            self.sessions = []
            self.deployments = []
            self._seed()

    def _seed(self) -> None:
        self.rooms = [self._room(i) for i in range(3)]
        base = datetime.now(UTC) - timedelta(hours=3)
        for index, sha in enumerate(("a1b2c3d4e5", "b2c3d4e5f6", "c3d4e5f6a7")):
            created = int((base + timedelta(hours=index)).timestamp() * 1000)
            meta = {"githubCommitSha": sha * 4, "githubCommitMessage": f"release {index}"}
            url = f"sandbox-app-{index}.vercel.app"
            doc = dict(uid=f"dpl_sandbox{index}", name="sandbox-app", url=url, created=created)
            doc |= dict(createdAt=created, state="READY", readyState="READY", target="production")
            self.deployments.insert(0, {**doc, "projectId": self.vercel_project, "meta": meta})
        self.production_id = self.deployments[0]["uid"]

    def _page(self) -> dict[str, Any]:
        return {"id": self.page_id, "name": "Sandbox", "url": self.url, "updated_at": now_iso()}

    def _public_incidents(self) -> list[dict[str, Any]]:
        open_ones = [i for i in self.incidents.values() if i["status"] != "resolved"]
        if self.provider_state != "operational":
            body, when = "We are investigating elevated errors.", now_iso()
            update = dict(id="upd-p", status="investigating", body=body, created_at=when)
            impact = _PROVIDER[self.provider_state][0]
            incident = dict(id="inc-p", name=f"Service {self.provider_state}", impact=impact)
            incident |= dict(status="investigating", created_at=when, shortlink=f"{self.url}/i/p")
            open_ones.append({**incident, "incident_updates": [{**update, "display_at": when}]})
        return open_ones

    def _status(self) -> dict[str, str]:
        indicator, description, _ = _PROVIDER[self.provider_state]
        if indicator == "none" and any(i["status"] != "resolved" for i in self.incidents.values()):
            indicator, description = "minor", "Minor Service Outage"
        return {"indicator": indicator, "description": description}

    # --- the app -------------------------------------------------------------------------

    async def _gate(self, service: str, request: Request) -> Response | None:
        raw = await request.body()
        try:
            body: Any = await request.json() if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _SECRET_HEADERS}
        record = RecordedRequest(
            service=service,
            method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            headers=headers,
            body=body,
        )
        with self._lock:
            self.requests.append(record)
            fault = self.faults.get(service)
            if fault is not None and fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    del self.faults[service]
        if fault is None:
            return None
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.status is None:
            return None
        extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        return JSONResponse(
            {"error": "sandbox fault", "message": "sandbox fault"},
            status_code=fault.status,
            headers=extra,
        )

    def _denied(self, service: str, request: Request) -> Response | None:
        auth = request.headers.get("authorization", "")
        if service == "statuspage":
            if auth != f"OAuth {self.statuspage_api_key}":
                return error_answer(401, "Could not authenticate")
            if not request.url.path.startswith(f"/v1/pages/{self.page_id}"):
                return error_answer(404, "The requested resource could not be found.")
        if service == "vercel" and auth != f"Bearer {self.vercel_token}":
            error = {"code": "forbidden", "message": "Not authorized", "invalidToken": True}
            return JSONResponse({"error": error}, status_code=403)
        if service != "hms":
            return None
        try:
            claims = jwt.decode(auth.removeprefix("Bearer "), self.hms_app_secret, ["HS256"])
        except jwt.ExpiredSignatureError:
            return JSONResponse({"code": 401, "message": "token is expired"}, status_code=401)
        except jwt.PyJWTError:
            return JSONResponse({"code": 401, "message": "invalid token"}, status_code=401)
        if claims.get("type") != "management" or claims.get("access_key") != self.hms_access_key:
            return JSONResponse({"code": 403, "message": "not a management token"}, 403)
        return None

    def _app(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

        @app.middleware("http")
        async def gate(request: Request, call_next: Any) -> Response:
            path = request.url.path
            service = next((svc for prefix, svc in _PREFIXES if path.startswith(prefix)), "other")
            answer = await self._gate(service, request) or self._denied(service, request)
            return answer if answer is not None else await call_next(request)

        add_routes(app, self)
        return app
