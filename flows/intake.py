"""Alert intake shared by the receiver, the CLI and the health sweep: join an open incident or
open one, through the intake store (flows/spool.py).

Each accepted alert is handled on its own (:meth:`Intake.handle`):

- the service's incident is open → the alert **joins** it, atomically (only while the
  incident is still open in the store), and reaches the incident run as a run input whose
  key is the alert's id (re-sent after a crash, never duplicated);
- none is open → a firing alert **opens** one: the opening is claimed in the store first
  (one incident per service, however many receivers race), then the run is created with the
  claim's id as Prefect idempotency key; a resolved alert is recorded as ignored;
- the incident's run ended without closing (a killed process) → its registration is closed
  and the alert opens a new incident.

Failures are classified: Prefect away, or nobody serving the incident deployment, is a wait
(retried for ever, shown by /healthz); a refusal (HTTP 4xx, an invalid alert) is retried a
few times, then the alert is quarantined with the reason. Fields too large for Prefect are
trimmed with a marker; the full alert stays in the store.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import json
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal, cast

from pydantic import BaseModel, ValidationError

from flows.incident_model import fingerprint_tag
from flows.prefect_api import PrefectAPI
from flows.spool import Entry, Registration, Spool
from integrations.alerts import Alert
from integrations.errors import NotFound, OncallError, ProviderError, TargetError, Unreachable

__all__ = [
    "CONTROL_PREFIX",
    "MAX_ALERT_JSON",
    "Intake",
    "NobodyHome",
    "Submission",
    "alert_input_key",
    "creation_tags",
    "find_open",
    "group",
    "open_by_deployment",
    "send_control",
    "served",
    "submit",
    "trimmed",
]

CONTROL_PREFIX = "oncall-ctl-"
# Prefect refuses flow run parameters over 512 KB: an alert is trimmed well below that.
MAX_ALERT_JSON = 64 * 1024
JOIN_BYTES = 256 * 1024  # joined alerts per run input (several trimmed alerts fit)
_FIELD_STEPS = (8192, 1024, 128)
_TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
STATE_TTL_S = 5.0
LIVE_POLL_S = 60.0  # a runner that polled within this is alive (Prefect's own NOT_READY: 60 s)


class NobodyHome(OncallError):
    """No live runner or worker serves the deployment a run would be handed to."""


class Submission(BaseModel):
    """What the intake did with one alert."""

    action: Literal["joined", "opened", "ignored"]
    incident_run_id: str | None = None
    reason: str = ""


# (alert, intake reference) -> the incident's flow run id. The reference (registration id,
# opening alert id, store) goes to the incident, which closes its registration when it ends.
Opener = Callable[[Alert, dict[str, str]], Awaitable[str]]


def creation_tags(alert: Alert) -> list[str]:
    """Tags an incident run carries from the moment it is created."""
    return ["oncall", "incident", fingerprint_tag(alert.fingerprint), f"service:{alert.service}"]


def alert_input_key(entry_id: str) -> str:
    return f"{CONTROL_PREFIX}alert-{entry_id}"


def _alert_messages(batch: list[tuple[Entry, Alert]]) -> Iterator[tuple[dict[str, Any], str]]:
    """(run input, key) carrying joined alerts: one alert keyed by its intake id, several
    in inputs of at most JOIN_BYTES keyed by their ids (a re-send writes the same keys; a
    different grouping after a crash is counted once by the incident, by intake id)."""
    if len(batch) == 1:
        entry, alert = batch[0]
        message = {"kind": "alert", "id": entry.id, "alert": alert.model_dump(mode="json")}
        yield message, alert_input_key(entry.id)
        return
    items: list[dict[str, Any]] = []
    size = 0
    for entry, alert in batch:
        item = {"id": entry.id, "alert": alert.model_dump(mode="json")}
        length = len(json.dumps(item))
        if items and size + length > JOIN_BYTES:
            yield _alerts_input(items)
            items, size = [], 0
        items.append(item)
        size += length
    yield _alerts_input(items)


def _alerts_input(items: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    digest = hashlib.sha256("|".join(i["id"] for i in items).encode()).hexdigest()[:32]
    return {"kind": "alerts", "alerts": items}, f"{CONTROL_PREFIX}alerts-{digest}"


def send_control(api: PrefectAPI, run_id: str, message: dict[str, Any], key: str = "") -> None:
    """Writes a control input; a key already written (a re-send) is not an error."""
    try:
        api.send_input(run_id, key or f"{CONTROL_PREFIX}{uuid.uuid4().hex}", message)
    except ProviderError as exc:
        if exc.status != 409:
            raise


def find_open(api: PrefectAPI, alert: Alert) -> dict[str, Any] | None:
    """The open incident run of this alert in Prefect: same fingerprint first, then service."""
    for tag in (fingerprint_tag(alert.fingerprint), f"service:{alert.service}"):
        runs = api.incident_runs([tag], open_only=True, limit=5)
        if runs:
            return runs[-1]
    return None


def group(alerts: list[Alert]) -> list[list[Alert]]:
    """Alerts of one payload, grouped per service (each group is one incident)."""
    groups: dict[str, list[Alert]] = {}
    for alert in alerts:
        groups.setdefault(alert.service, []).append(alert)
    return list(groups.values())


def trimmed(alert: Alert, entry_id: str) -> Alert:
    """The alert with its longest texts cut (and marked) until it fits MAX_ALERT_JSON."""
    if len(alert.model_dump_json()) <= MAX_ALERT_JSON:
        return alert
    data = alert.model_dump(mode="json")
    for limit in _FIELD_STEPS:
        for field in ("labels", "annotations"):
            data[field] = {k[:200]: _cut(v, limit, entry_id) for k, v in data[field].items()}
        for field in ("title", "url"):
            if isinstance(data.get(field), str):
                data[field] = _cut(data[field], min(limit, 2000), entry_id)
        if len(json.dumps(data)) <= MAX_ALERT_JSON:
            break
    else:  # thousands of labels: keep the ones routing reads, say where the rest are
        keep = ("alertname", "service", "severity")
        data["labels"] = {k: v for k, v in data["labels"].items() if k in keep}
        data["annotations"] = {"oncall_trimmed": f"full alert in the intake: {entry_id}"}
        data["metrics"] = {}
    return Alert.model_validate(data)


def _cut(text: str, limit: int, entry_id: str) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [trimmed {len(text) - limit} characters; full alert: {entry_id}]"


def served(api: PrefectAPI, deployment: str, *, now: datetime | None = None) -> str | None:
    """None when a live runner or worker serves ``deployment``, else why not (one line).

    A work pool deployment is served while one of the pool's workers is ONLINE (Prefect
    tracks their heartbeats); a runner-served one (``oncall serve``, ``flow.serve``) while
    its runner polled within LIVE_POLL_S."""
    found = api.deployment(deployment)
    if found is None:
        return f"no deployment {deployment} on this Prefect server"
    if found.get("paused"):
        return f"deployment {deployment} is paused"
    pool = found.get("work_pool_name")
    if pool:
        workers = api.pool_workers(pool)
        if any(w.get("status") == "ONLINE" for w in workers):
            return None
        return f"no worker of work pool {pool!r} is online to run {deployment}"
    polled = found.get("last_polled")
    age = None
    if polled:
        at = datetime.fromisoformat(polled.replace("Z", "+00:00"))
        age = ((now or datetime.now(UTC)) - at).total_seconds()
    if age is not None and age <= LIVE_POLL_S:
        return None
    last = f"last polled {age:.0f}s ago" if age is not None else "never polled"
    return f"no runner serves {deployment} ({last})"


async def open_by_deployment(
    alert: Alert,
    intake: dict[str, str],
    config_path: str | None = None,
    api_url: str | None = None,
) -> str:
    """Starts the ``incident`` deployment for this alert, if a live runner or worker serves
    it; the intake's registration id is the idempotency key (a retry returns the same run)."""
    from prefect.deployments import run_deployment

    from flows.server import DEFAULT_API_URL

    with PrefectAPI(api_url or os.environ.get("PREFECT_API_URL", DEFAULT_API_URL)) as api:
        why = await asyncio.to_thread(served, api, "incident/incident")
    if why:
        raise NobodyHome(why)
    run: Any = await cast(Any, run_deployment)(
        "incident/incident",
        parameters={
            "alert": alert.model_dump(mode="json"),
            "config_path": config_path,
            "intake": intake,
        },
        tags=creation_tags(alert),
        idempotency_key=f"oncall-intake-{intake['registration']}",
        timeout=0,
    )
    return str(run.id)


def _config_or_none() -> Any:
    """oncall.yaml ($ONCALL_CONFIG, as ``oncall serve`` sets it for its runs), if any: its
    ``receiver.store`` is the store every receiver of this installation shares."""
    import logging

    from flows.config_load import find_config, load_config
    from integrations.errors import ConfigError

    try:
        path = find_config(None)
        return load_config(path) if path else None
    except ConfigError as exc:  # e.g. a service secret this process has no access to
        logging.getLogger("oncall.intake").warning(
            "oncall.yaml unreadable here (%s): the local intake store is used", exc
        )
        return None


def _run_state(api: PrefectAPI, run_id: str) -> str:
    try:
        return api.flow_run(run_id)["state"]["type"]
    except NotFound:  # deleted: nothing runs it
        return "CANCELLED"


def _wait(exc: BaseException) -> bool:
    """A reason to wait and retry without counting (Prefect away, nobody home yet)."""
    if isinstance(exc, NobodyHome | Unreachable | ConnectionError | TimeoutError):
        return True
    status = getattr(exc, "status", None)
    return isinstance(exc, TargetError) and (status is None or status >= 500 or status == 429)


class Intake:
    """Hands stored alerts to incidents; one per process (its ``owner`` holds the leases)."""

    def __init__(self, store: Spool, api_url: str, opener: Opener) -> None:
        self.store = store
        self.api_url = api_url
        self.opener = opener
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._states: dict[str, tuple[str, float]] = {}  # run id -> (state type, read at)

    async def handle(self, entry: Entry, api: PrefectAPI) -> Submission | None:
        """Handles one alert; None when it went back to the queue (why: ``entry.error``)."""
        try:
            result = await self._handle(entry, api)
        except Exception as exc:
            wait = _wait(exc)
            reason = f"{type(exc).__name__}: {exc}"[:500]
            delay = 1.0 if wait else min(60.0, 2.0 ** (entry.attempts + 1))
            state = await asyncio.to_thread(
                self.store.retry, entry.id, reason, delay_s=delay, count=not wait
            )
            entry.error = reason
            if state == "quarantined":
                await self._abandon(entry, reason)
            if wait:
                raise
            return None
        if result is None:  # another receiver is opening this service's incident
            await asyncio.to_thread(
                self.store.retry, entry.id, "waiting for the incident being opened", delay_s=0.5,
                count=False,
            )  # fmt: skip
        return result

    async def _handle(self, entry: Entry, api: PrefectAPI) -> Submission | None:
        try:
            alert = trimmed(entry.alert, entry.id)
        except ValidationError as exc:  # stored by an older version, or edited by hand
            await asyncio.to_thread(self.store.quarantine, entry.id, f"unreadable: {exc}")
            return Submission(action="ignored", reason="unreadable: quarantined")
        for _ in range(3):  # an incident closing under our feet: look again
            reg = await asyncio.to_thread(self.store.registration, alert.service)
            if reg is not None and reg.state == "open" and reg.run_id:
                joined = await self._join(reg, [(entry, alert)], api)
                if joined is None:
                    continue
                return joined
            if reg is None and alert.status == "resolved":
                done = Submission(action="ignored", reason="resolved alert with no open incident")
                await asyncio.to_thread(self.store.finish, done.model_dump(), entry.id)
                return done
            claim = await asyncio.to_thread(self.store.claim_opening, alert, self.owner)
            if claim is None:
                return None
            try:
                run_id = await self.opener(alert, self.intake_ref(claim.id, entry.id))
            except Exception:
                await asyncio.to_thread(self.store.release_opening, claim.id)
                raise
            opened = Submission(action="opened", incident_run_id=run_id)
            await asyncio.to_thread(
                self.store.opened, claim.id, run_id, entry.id, opened.model_dump()
            )
            return opened
        return None

    async def join_many(
        self, entries: list[Entry], api: PrefectAPI
    ) -> tuple[int, Submission | None]:
        """Joins the leading ``entries`` (one service's, oldest first) to the service's open
        incident together: one store transaction and one run input per JOIN_BYTES, where one
        at a time costs a Prefect write per alert. Returns how many joined (and are done)
        and what became of them; 0 leaves the rest to :meth:`handle` (no open incident, an
        unreadable alert first, Prefect refusing the input). A wait (Prefect away) is
        raised, nothing done."""
        reg = await asyncio.to_thread(self.store.registration, entries[0].service)
        if reg is None or reg.state != "open" or not reg.run_id:
            return 0, None
        batch = []
        for entry in entries:
            try:
                batch.append((entry, trimmed(entry.alert, entry.id)))
            except ValidationError:  # handle() quarantines it, in its turn
                break
        if not batch:
            return 0, None
        try:
            joined = await self._join(reg, batch, api)
        except Exception as exc:
            if _wait(exc):
                raise
            return 0, None  # refused: one by one, each with its own retries and quarantine
        return (len(batch), joined) if joined else (0, None)

    async def _join(
        self, reg: Registration, batch: list[tuple[Entry, Alert]], api: PrefectAPI
    ) -> Submission | None:
        """Joins the alerts to the open incident ``reg`` and hands them to its run; None when
        the incident is no longer open (its run ended without closing it: closed here)."""
        run_id = str(reg.run_id)
        state = await self._run_state(api, run_id)
        if state in _TERMINAL:  # killed without closing: it takes no more alerts
            await asyncio.to_thread(self.store.close_run, run_id, f"its run ended {state.lower()}")
            return None
        ids = [entry.id for entry, _ in batch]
        if not await asyncio.to_thread(self.store.join, reg.id, *ids):
            return None
        for message, key in _alert_messages(batch):
            await asyncio.to_thread(send_control, api, run_id, message, key)
        done = Submission(action="joined", incident_run_id=run_id)
        await asyncio.to_thread(self.store.finish, done.model_dump(), *ids)
        return done

    async def _abandon(self, entry: Entry, reason: str) -> None:
        """A quarantined alert gives up the incident it was opening, so others can open it."""
        reg = await asyncio.to_thread(self.store.registration, entry.service)
        if reg is not None and reg.state == "opening" and reg.owner in (None, self.owner):
            await asyncio.to_thread(self.store.abandon, reg.id, f"quarantined: {reason}")

    async def _run_state(self, api: PrefectAPI, run_id: str) -> str:
        """The run's state type, read at most every STATE_TTL_S per run: a run that dies is
        found by the next read or the reconcile, and joining stays atomic in the store."""
        now = time.monotonic()
        cached = self._states.get(run_id)
        if cached is None or now - cached[1] > STATE_TTL_S or cached[0] in _TERMINAL:
            cached = (await asyncio.to_thread(_run_state, api, run_id), now)
            self._states[run_id] = cached
        return cached[0]

    async def reconcile(self, api: PrefectAPI) -> list[str]:
        """Closes the registrations of incidents whose run ended without closing them."""
        closed = []
        for reg in await asyncio.to_thread(self.store.registrations, "open"):
            state = await asyncio.to_thread(_run_state, api, reg.run_id) if reg.run_id else ""
            if state in _TERMINAL:
                await asyncio.to_thread(
                    self.store.close_run, str(reg.run_id), f"its run ended {state.lower()}"
                )
                closed.append(str(reg.run_id))
        return closed

    def intake_ref(self, reg_id: str, entry_id: str) -> dict[str, str]:
        return {"registration": reg_id, "alert_id": entry_id}


async def submit(
    alert: Alert, api: PrefectAPI, opener: Callable[..., Awaitable[str]], store: Spool | None = None
) -> Submission:
    """Stores one alert and handles it at once (the health sweep's path)."""
    from flows.spool import store_url

    if len(inspect.signature(opener).parameters) == 1:  # an opener of (alert) alone
        plain = opener

        async def opener(alert: Alert, intake: dict[str, str]) -> str:
            return await plain(alert)

    own = store is None
    store = store or Spool(store_url(_config_or_none()))
    try:
        # A sweep's alert is a new observation each time, not a sender's retry: no dedup.
        entry_id, _ = await asyncio.to_thread(functools.partial(store.put, alert, dedup=False))
        intake = Intake(store, api.api_url, opener)
        for _ in range(20):
            claimed = await asyncio.to_thread(store.claim, intake.owner, only=entry_id)
            if not claimed:  # another owner works on this service right now
                await asyncio.sleep(0.5)
                continue
            entry = claimed[0]
            done = await intake.handle(entry, api)
            if done is not None:
                return done
            if entry.error and "waiting" not in entry.error:
                raise OncallError(entry.error)
            await asyncio.sleep(0.5)
        raise OncallError(f"alert {entry_id} is still waiting to be handled (in the intake)")
    finally:
        if own:
            store.close()
