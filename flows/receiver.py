"""The webhook receiver of ``oncall serve``: alerts in, approvals from Slack, all authenticated.

- ``POST /alerts/alertmanager`` and ``/alerts/generic``: bearer token;
  ``/alerts/sentry``: Sentry's HMAC signature; ``/alerts/pagerduty``: PagerDuty v3
  signature. Anything unauthenticated gets 401 and starts nothing.
- Every accepted alert is committed to the intake store (flows/spool.py, group-committed:
  flows/spool_commit.py) before the 202; a background dispatcher hands each one to the
  intake (join or open, flows/intake.py) on its own, keeps them while the Prefect API is
  unreachable, and quarantines the ones refused for good. ``GET /healthz`` says ok or
  degraded, and why.
- ``POST /approvals/slack``: Slack's interactive buttons, verified with the signing
  secret; the verified Slack user is the approver identity.
- Bad bodies get a 4xx naming the problem (JSON nested deeper than MAX_DEPTH too), never
  a 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from flows.config import OncallConfig
from flows.decisions import sealed_input, wait_verdict
from flows.intake import Intake, Opener, Submission
from flows.prefect_api import PrefectAPI
from flows.spool import Entry, Spool
from flows.spool_commit import GroupCommit
from integrations import slack
from integrations.alerts import Alert, parse_alerts
from integrations.errors import ConfigError, OncallError
from integrations.pagerduty import verify_pagerduty_signature
from integrations.sentry import verify_sentry_signature

__all__ = ["Dispatcher", "DispatcherView", "create_app", "health_report"]

log = logging.getLogger("oncall.receiver")

MAX_DEPTH = 32  # no alert source nests deeper; Python's JSON parser overflows near 1,000
CLAIM_BATCH = 256
# How long an alert that joins an open incident may wait for more of its service's alerts,
# so a storm's joins reach the incident as one run input (it reads them once a second
# anyway); an alert that opens an incident never waits.
JOIN_LINGER_S = 1.0
RECONCILE_S = 30.0  # how often open incidents are checked for runs that died
IDLE_POLL_S = 2.0
IDLE_FLOOR_S = 0.2
PRUNE_S = 600.0  # handled alerts older than a week go, checked this often
STUCK_S = 30.0  # a pending alert older than this makes /healthz degraded
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _problem(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _header(request: Request, name: str) -> str:
    """A signature header, or "" when it holds non-ASCII (hmac.compare_digest raises on those)."""
    value = request.headers.get(name, "")
    return value if value.isascii() else ""


class Dispatcher:
    """Hands stored alerts to the intake: each on its own, services concurrently, a service's
    alerts in order; waits (with back-off) while Prefect is away."""

    def __init__(
        self,
        spool: Spool,
        api_url: str,
        opener: Opener,
        on_result: Callable[[Alert, Submission], None] | None = None,
        *,
        concurrency: int = 8,
        linger_s: float = JOIN_LINGER_S,
    ) -> None:
        self.spool = spool
        self.linger_s = linger_s
        self.intake = Intake(spool, api_url, opener)
        self.on_result = on_result  # told what became of each alert (oncall serve's log)
        self.wake = asyncio.Event()
        self.handled = 0
        self.prefect_ok = True
        self.last_error = ""
        self._slots = asyncio.Semaphore(concurrency)
        self._reconciled = 0.0
        self._pruned = 0.0

    @property
    def api_url(self) -> str:
        return self.intake.api_url

    @api_url.setter
    def api_url(self, value: str) -> None:
        self.intake.api_url = value

    async def drain(self) -> int:
        """Handles every due alert; raises the first outage after doing what it could."""
        done = 0
        waited: Exception | None = None
        with PrefectAPI(self.api_url) as api:
            if time.monotonic() - self._reconciled > RECONCILE_S:
                self._reconciled = time.monotonic()
                await self.intake.reconcile(api)
            while waited is None:
                entries = await asyncio.to_thread(
                    functools.partial(
                        self.spool.claim,
                        self.intake.owner,
                        limit=CLAIM_BATCH,
                        linger_s=self.linger_s,
                    )
                )
                if not entries:
                    break
                by_service: dict[str, list[Entry]] = {}
                for entry in entries:
                    by_service.setdefault(entry.service, []).append(entry)
                outcomes = await asyncio.gather(
                    *(self._service(api, batch) for batch in by_service.values())
                )
                done += sum(n for n, _ in outcomes)
                waited = next((exc for _, exc in outcomes if exc is not None), None)
                if all(n == 0 for n, _ in outcomes):
                    break  # everything claimed went back to wait: come back later
        self.handled += done
        if waited is not None:
            self.prefect_ok = False
            self.last_error = f"{type(waited).__name__}: {waited}"[:300]
            raise waited
        self.prefect_ok = True
        return done

    async def _service(self, api: PrefectAPI, entries: list[Entry]) -> tuple[int, Exception | None]:
        done = 0
        async with self._slots:
            i = 0
            while i < len(entries):
                first = i  # on a wait, entries[first:] go back to the queue
                try:
                    # The service's incident is open: its alerts join it together.
                    joined, result = await self.intake.join_many(entries[i:], api)
                    handled = entries[i : i + joined]
                    if not joined:
                        first = i + 1  # handle() puts its own alert back
                        result = await self.intake.handle(entries[i], api)
                        handled = [entries[i]]
                except Exception as exc:  # a wait: the rest of this service waits too
                    for rest in entries[first:]:
                        await asyncio.to_thread(
                            self.spool.retry, rest.id, str(exc)[:300], delay_s=1.0, count=False
                        )
                    return done, exc
                i += len(handled)
                if result is None:
                    if handled[-1].error:
                        self.last_error = handled[-1].error[:300]
                        log.warning("alert %s not handled: %s", handled[-1].id, handled[-1].error)
                    continue
                done += len(handled)
                if self.on_result is not None:
                    for entry in handled:
                        self.on_result(entry.alert, result)
        return done, None

    async def run(self) -> None:
        delay = 1.0
        while True:
            # Cleared before draining: an alert stored during the drain wakes the next one.
            self.wake.clear()
            try:
                await self.drain()
                delay = 1.0
                if time.monotonic() - self._pruned > PRUNE_S:
                    self._pruned = time.monotonic()
                    await asyncio.to_thread(self.spool.prune)
            except Exception as exc:  # Prefect away or failing: alerts stay stored
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("dispatch paused (%s); retrying in %.0fs", exc, delay)
                await asyncio.sleep(delay)  # new alerts do not hurry a back-off
                delay = min(30.0, delay * 2)
                continue
            idle_s = await self._idle_s()  # first: a cancel here leaves no coroutine behind
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=idle_s)

    async def _idle_s(self) -> float:
        """How long to wait for a new alert before looking again: until the next pending
        alert (a lingering join, a back-off) is due, at most IDLE_POLL_S."""
        due = await asyncio.to_thread(self.spool.next_due)
        if due is None:
            return IDLE_POLL_S
        # At least IDLE_FLOOR_S: an alert another receiver holds under lease is "due" too.
        return min(IDLE_POLL_S, max(IDLE_FLOOR_S, due + self.linger_s - self.spool.clock()))

    def health(self) -> dict[str, Any]:
        """What /healthz says: ok, or degraded with the reasons."""
        return health_report(self.spool.stats(), self.prefect_ok, self.last_error)


class DispatcherView(Protocol):
    """What the receiver needs of the dispatcher: the in-process :class:`Dispatcher`, or
    its relay in a receiver process of its own (flows/receiver_process.py)."""

    @property
    def api_url(self) -> str: ...

    @property
    def wake(self) -> Wakeable: ...

    def health(self) -> dict[str, Any]: ...


class Wakeable(Protocol):
    def set(self) -> None: ...


def health_report(stats: dict[str, Any], prefect_ok: bool, last_error: str) -> dict[str, Any]:
    """/healthz: ok, or degraded with the reasons, from the store's figures and the
    dispatcher's state."""
    reasons = []
    if not prefect_ok:
        reasons.append(f"Prefect API unreachable: {last_error}")
    if stats["pending"] and stats["oldest_pending_s"] > STUCK_S:
        reasons.append(
            f"{stats['pending']} alert(s) pending, the oldest for {stats['oldest_pending_s']:.0f}s"
        )
    if stats["quarantined"]:
        reasons.append(f"{stats['quarantined']} alert(s) quarantined (oncall intake list)")
    return {
        "status": "degraded" if reasons else "ok",
        "reasons": reasons,
        "prefect_reachable": prefect_ok,
        "last_error": last_error,
        **stats,
    }


def create_app(
    config: OncallConfig,
    spool: Spool,
    dispatcher: DispatcherView,
    *,
    resume: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None,
) -> FastAPI:
    """The receiver's FastAPI app (OpenAPI at /openapi.json, docs at /docs)."""
    rc = config.receiver
    accepting = GroupCommit(spool)
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
        if _too_deep(body):
            return _problem(422, f"alert payload: JSON nested deeper than {MAX_DEPTH} levels")
        try:
            alerts = parse_alerts(body, source=source)
        except ConfigError as exc:
            return _problem(422 if body.strip() else 400, str(exc))
        try:
            for alert in alerts:  # JSON can spell lone surrogates ("\ud800"): unstorable
                alert.model_dump_json()
        except ValueError:
            return _problem(422, "alert payload: text is not valid Unicode (unpaired surrogate)")
        stored = await accepting.put_many(alerts)  # committed: durable
        keys = [key for key, _ in stored]
        duplicates = sum(not new for _, new in stored)
        dispatcher.wake.set()
        return JSONResponse(
            {"accepted": len(alerts), "duplicates": duplicates, "ids": keys}, status_code=202
        )

    async def accept_bearer(request: Request, source: str) -> JSONResponse:
        if not bearer_ok(request):
            return _problem(401, "missing or wrong bearer token")
        body = await body_of(request)
        return body if isinstance(body, JSONResponse) else await accept(body, source)

    @app.post("/alerts/alertmanager", status_code=202, tags=["alerts"])
    async def alertmanager(request: Request) -> JSONResponse:
        """Alertmanager webhook (v4). Authorization: Bearer <receiver.token>."""
        return await accept_bearer(request, "alertmanager")

    @app.post("/alerts/generic", status_code=202, tags=["alerts"])
    async def generic(request: Request) -> JSONResponse:
        """Generic JSON {service, title, severity?, labels?}. Authorization: Bearer <token>."""
        return await accept_bearer(request, "generic")

    async def signed_body(
        request: Request, signed: Callable[[bytes], bool], refusal: str
    ) -> bytes | JSONResponse:
        """The body when ``signed(body)``; else the problem response (401 ``refusal``)."""
        body = await body_of(request)
        if isinstance(body, JSONResponse):
            return body
        return body if signed(body) else _problem(401, refusal)

    @app.post("/alerts/sentry", status_code=202, tags=["alerts"])
    async def sentry(request: Request) -> JSONResponse:
        """Sentry issue-alert webhook, verified with Sentry-Hook-Signature."""
        signature = _header(request, "sentry-hook-signature")
        secret = rc.sentry_client_secret

        def signed(body: bytes) -> bool:
            if secret is None or not signature:
                return False
            return verify_sentry_signature(secret, body, signature)

        body = await signed_body(request, signed, "missing or wrong Sentry-Hook-Signature")
        return body if isinstance(body, JSONResponse) else await accept(body, "sentry")

    @app.post("/alerts/pagerduty", status_code=202, tags=["alerts"])
    async def pagerduty(request: Request) -> JSONResponse:
        """PagerDuty v3 webhook, verified with X-PagerDuty-Signature."""
        header = _header(request, "x-pagerduty-signature")
        secrets = rc.pagerduty_webhook_secrets

        def signed(body: bytes) -> bool:
            return bool(secrets and header and verify_pagerduty_signature(secrets, body, header))

        body = await signed_body(request, signed, "missing or wrong X-PagerDuty-Signature")
        return body if isinstance(body, JSONResponse) else await accept(body, "pagerduty")

    @app.post("/approvals/slack", tags=["approvals"])
    async def slack_approval(request: Request) -> JSONResponse:
        """Slack interactive buttons (Approve/Reject), verified with the signing secret."""
        secret = rc.slack_signing_secret
        timestamp = _header(request, "x-slack-request-timestamp")
        signature = _header(request, "x-slack-signature")

        def signed(body: bytes) -> bool:
            return secret is not None and slack.verify_slack_signature(
                secret, timestamp, body, signature
            )

        body = await signed_body(request, signed, "missing, wrong or stale Slack signature")
        if isinstance(body, JSONResponse):
            return body
        try:
            if _too_deep(_slack_payload(body)):
                raise ConfigError(f"payload nested deeper than {MAX_DEPTH} levels")
            click = slack.parse_interaction(body)
            decision, run_id = click.decision, click.flow_run_id
        except (ConfigError, ValueError, RecursionError) as exc:
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
        # Identity and channel come from the signature check above, never from the payload's
        # text: the decision is sealed for the gate with them (see _resume).
        verified = {
            "approved": decision == "approve",
            "approver": approver,
            "reason": f"decided in Slack by @{click.user_name}",
            "channel": "slack",
            "identity": f"slack:{click.team_id}:{click.user_id}",
        }
        try:
            result = await asyncio.to_thread(
                resume or _resume(dispatcher.api_url), run_id, verified
            )
        except OncallError as exc:
            return JSONResponse({"text": f"Could not record the decision: {exc}"})
        if result.get("status") != "ACCEPT":
            reason = (result.get("details") or {}).get("reason", "not waiting for approval")
            return JSONResponse({"text": f"Not recorded: {reason}"})
        verdict = result.get("verdict") or {}
        if verdict.get("verdict") in ("refused", "not-counted"):
            return JSONResponse({"text": f"Not counted: {verdict.get('why', '')}"})
        return JSONResponse(slack.approval_decided(run_id, decision=decision, approver=approver))

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, Any]:
        """ok, or degraded (why): Prefect reachable, pending alerts and the oldest's age,
        quarantined alerts. Always 200 while the receiver accepts alerts."""
        return await asyncio.to_thread(dispatcher.health)

    return app


def _too_deep(body: bytes, limit: int = MAX_DEPTH) -> bool:
    """JSON nested deeper than ``limit`` (brackets inside strings do not count)."""
    brackets = _STRINGS.sub(b"", body).translate(None, _NOT_BRACKETS)
    depth = 0
    for byte in brackets:
        depth += 1 if byte in b"[{" else -1
        if depth > limit:
            return True
    return False


def _slack_payload(body: bytes) -> bytes:
    """The JSON of Slack's ``payload=`` form field (empty when there is none)."""
    try:
        values = parse_qs(body.decode("utf-8", "replace")).get("payload") or [""]
    except ValueError:
        return b""
    return values[0].encode("utf-8", "replace")


def _resume(api_url: str) -> Callable[[str, dict[str, Any]], dict[str, Any]]:
    """Seals the verified decision for the run's waiting gate and resumes it.

    Answers with Prefect's orchestration result plus ``verdict``: what the gate made of
    it, when it says so within 2 s (Slack wants an answer within 3).
    """

    def resume(run_id: str, verified: dict[str, Any]) -> dict[str, Any]:
        with PrefectAPI(api_url) as api:
            run = api.pausing(api.flow_run(run_id), within_s=1.0)  # Slack waits 3 s
            gate = api.gate(run) if (run.get("state") or {}).get("type") == "PAUSED" else None
            if gate is None:
                return {"status": "ABORT", "details": {"reason": "not waiting for approval"}}
            result = api.resume(run_id, sealed_input(gate, run_id=run_id, **verified))
            if result.get("status") == "ACCEPT":
                result["verdict"] = wait_verdict(api, run_id, gate["pause_key"], 2.0)
            return result

    return resume
