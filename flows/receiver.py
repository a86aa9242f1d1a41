"""The webhook receiver of ``oncall serve``: alerts in, approvals from Slack, all authenticated.

- ``POST /alerts/alertmanager`` and ``/alerts/generic``: bearer token;
  ``/alerts/sentry``: Sentry's HMAC signature; ``/alerts/pagerduty``: PagerDuty v3
  signature. Anything unauthenticated gets 401 and starts nothing.
- Every accepted alert is written to the spool (fsynced) before the 202; a background
  dispatcher hands spooled alerts to the intake (join or open) and keeps them while
  the Prefect API is unreachable.
- ``POST /approvals/slack``: Slack's interactive buttons, verified with the signing
  secret; the verified Slack user is the approver identity.
- Bad bodies get a 4xx naming the problem, never a 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from flows.config import OncallConfig
from flows.intake import Opener, Submission, submit
from flows.prefect_api import PrefectAPI
from flows.spool import Spool
from integrations import slack
from integrations.alerts import Alert, parse_alerts
from integrations.errors import ConfigError, OncallError, TargetError
from integrations.pagerduty import verify_pagerduty_signature
from integrations.sentry import verify_sentry_signature

__all__ = ["Dispatcher", "create_app"]

log = logging.getLogger("oncall.receiver")


def _problem(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _header(request: Request, name: str) -> str:
    """A signature header, or "" when it holds non-ASCII (hmac.compare_digest raises on those)."""
    value = request.headers.get(name, "")
    return value if value.isascii() else ""


class Dispatcher:
    """Moves spooled alerts into incidents; retries with backoff while Prefect is away."""

    def __init__(
        self,
        spool: Spool,
        api_url: str,
        opener: Opener,
        on_result: Callable[[Alert, Submission], None] | None = None,
    ) -> None:
        self.spool = spool
        self.api_url = api_url
        self.opener = opener
        self.on_result = on_result  # told what became of each alert (oncall serve's log)
        self.wake = asyncio.Event()
        self.handled = 0
        self.prefect_ok = True
        self.last_error = ""

    async def drain(self) -> int:
        """Submits every pending alert in order; stops at the first outage."""
        done = 0
        with PrefectAPI(self.api_url) as api:
            for path in self.spool.waiting():
                try:
                    alert = self.spool.read(path)
                except (ValueError, OSError) as exc:  # unreadable: keep it out of the way
                    self.spool.finish(path, {"action": "ignored", "reason": f"unreadable: {exc}"})
                    continue
                try:
                    result = await submit(alert, api, self.opener)
                except (TargetError, OSError, RuntimeError) as exc:
                    self.prefect_ok = False
                    self.last_error = str(exc)[:300]
                    raise
                self.spool.finish(path, result.model_dump())
                if self.on_result is not None:
                    self.on_result(alert, result)
                done += 1
        self.prefect_ok = True
        self.handled += done
        return done

    async def run(self) -> None:
        delay = 1.0
        while True:
            # Cleared before draining: an alert spooled during the drain wakes the next one.
            self.wake.clear()
            try:
                await self.drain()
                delay = 1.0
                self.spool.prune()
            except Exception as exc:  # Prefect away or failing: alerts stay spooled
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("dispatch paused (%s); retrying in %.0fs", exc, delay)
                delay = min(30.0, delay * 2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=delay)


def create_app(
    config: OncallConfig,
    spool: Spool,
    dispatcher: Dispatcher,
    *,
    resume: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None,
) -> FastAPI:
    """The receiver's FastAPI app (OpenAPI at /openapi.json, docs at /docs)."""
    rc = config.receiver
    app = FastAPI(
        title="oncall-runbooks receiver",
        version="1",
        description="Alerts in (Alertmanager, Sentry, PagerDuty, generic JSON) "
        "and Slack approvals; every request authenticated.",
    )

    async def body_of(request: Request) -> bytes | JSONResponse:
        length = request.headers.get("content-length")
        if length and length.isascii() and length.isdigit() and int(length) > rc.max_body_bytes:
            return _problem(413, f"body larger than {rc.max_body_bytes} bytes")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > rc.max_body_bytes:
                return _problem(413, f"body larger than {rc.max_body_bytes} bytes")
        return body

    def bearer_ok(request: Request) -> bool:
        if rc.token is None:
            return False
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), rc.token.get_secret_value().encode()
        )

    async def accept(body: bytes, source: str) -> JSONResponse:
        try:
            alerts = parse_alerts(body, source=source)
        except ConfigError as exc:
            return _problem(422 if body.strip() else 400, str(exc))
        try:
            for alert in alerts:  # JSON can spell lone surrogates ("\ud800"): unstorable
                alert.model_dump_json()
        except ValueError:
            return _problem(422, "alert payload: text is not valid Unicode (unpaired surrogate)")
        keys, duplicates = [], 0
        for alert in alerts:
            key, new = spool.put(alert)
            keys.append(key)
            duplicates += not new
        dispatcher.wake.set()
        return JSONResponse(
            {"accepted": len(alerts), "duplicates": duplicates, "ids": keys}, status_code=202
        )

    @app.post("/alerts/alertmanager", status_code=202, tags=["alerts"])
    async def alertmanager(request: Request) -> JSONResponse:
        """Alertmanager webhook (v4). Authorization: Bearer <receiver.token>."""
        if not bearer_ok(request):
            return _problem(401, "missing or wrong bearer token")
        body = await body_of(request)
        return body if isinstance(body, JSONResponse) else await accept(body, "alertmanager")

    @app.post("/alerts/generic", status_code=202, tags=["alerts"])
    async def generic(request: Request) -> JSONResponse:
        """Generic JSON {service, title, severity?, labels?}. Authorization: Bearer <token>."""
        if not bearer_ok(request):
            return _problem(401, "missing or wrong bearer token")
        body = await body_of(request)
        return body if isinstance(body, JSONResponse) else await accept(body, "generic")

    @app.post("/alerts/sentry", status_code=202, tags=["alerts"])
    async def sentry(request: Request) -> JSONResponse:
        """Sentry issue-alert webhook, verified with Sentry-Hook-Signature."""
        body = await body_of(request)
        if isinstance(body, JSONResponse):
            return body
        signature = _header(request, "sentry-hook-signature")
        secret = rc.sentry_client_secret
        if secret is None or not signature or not verify_sentry_signature(secret, body, signature):
            return _problem(401, "missing or wrong Sentry-Hook-Signature")
        return await accept(body, "sentry")

    @app.post("/alerts/pagerduty", status_code=202, tags=["alerts"])
    async def pagerduty(request: Request) -> JSONResponse:
        """PagerDuty v3 webhook, verified with X-PagerDuty-Signature."""
        body = await body_of(request)
        if isinstance(body, JSONResponse):
            return body
        header = _header(request, "x-pagerduty-signature")
        if (
            not rc.pagerduty_webhook_secrets
            or not header
            or not verify_pagerduty_signature(rc.pagerduty_webhook_secrets, body, header)
        ):
            return _problem(401, "missing or wrong X-PagerDuty-Signature")
        return await accept(body, "pagerduty")

    @app.post("/approvals/slack", tags=["approvals"])
    async def slack_approval(request: Request) -> JSONResponse:
        """Slack interactive buttons (Approve/Reject), verified with the signing secret."""
        body = await body_of(request)
        if isinstance(body, JSONResponse):
            return body
        secret = rc.slack_signing_secret
        timestamp = _header(request, "x-slack-request-timestamp")
        signature = _header(request, "x-slack-signature")
        if secret is None or not slack.verify_slack_signature(secret, timestamp, body, signature):
            return _problem(401, "missing, wrong or stale Slack signature")
        try:
            click = slack.parse_interaction(body)
            decision, run_id = click.decision, click.flow_run_id
        except (ConfigError, ValueError) as exc:
            return _problem(400, f"not a Slack approval interaction: {exc}")
        try:  # the id goes into a Prefect API path: only a UUID may get there
            run_id = str(uuid.UUID(run_id))
        except ValueError:
            return _problem(
                400, f"not a Slack approval interaction: {run_id[:40]!r} is not a flow run id"
            )
        approver = re.sub(r"[^A-Za-z0-9 ._@+-]", "", click.user_name)[:64] or click.user_id
        if not approver[:1].isalnum():
            approver = click.user_id
        run_input = {
            "approved": decision == "approve",
            "approver": approver,
            "reason": f"decided in Slack by @{click.user_name}",
            "channel": "slack",
            "identity": f"slack:{click.team_id}:{click.user_id}",
        }
        try:
            result = await asyncio.to_thread(
                resume or _resume(dispatcher.api_url), run_id, run_input
            )
        except OncallError as exc:
            return JSONResponse({"text": f"Could not record the decision: {exc}"})
        if result.get("status") != "ACCEPT":
            reason = (result.get("details") or {}).get("reason", "not waiting for approval")
            return JSONResponse({"text": f"Not recorded: {reason}"})
        return JSONResponse(slack.approval_decided(run_id, decision=decision, approver=approver))

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, Any]:
        """Liveness: the receiver answers; spool counts and whether Prefect is reachable."""
        return {
            "status": "ok",
            "prefect_reachable": dispatcher.prefect_ok,
            "last_error": dispatcher.last_error,
            **spool.counts(),
        }

    return app


def _resume(api_url: str) -> Callable[[str, dict[str, Any]], dict[str, Any]]:
    def resume(run_id: str, run_input: dict[str, Any]) -> dict[str, Any]:
        with PrefectAPI(api_url) as api:
            return api.resume(run_id, run_input)

    return resume
