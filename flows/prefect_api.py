"""The few Prefect REST calls the CLI's fast paths need, over httpx (no ``import prefect``).

``oncall pending`` and ``oncall approve`` must answer in well under a second at
3 a.m.; importing Prefect alone costs more than that. These are Prefect's own
endpoints (the same ones its client calls): runs, run inputs, resume.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from integrations.errors import AuthError, ConfigError, NotFound, ProviderError, Unreachable
from integrations.tls import tls

__all__ = ["PrefectAPI"]


class PrefectAPI:
    """A thin, synchronous view of the Prefect server's REST API."""

    def __init__(self, api_url: str, *, transport: httpx.BaseTransport | None = None) -> None:
        from flows.server import auth_headers

        self.api_url = api_url.rstrip("/")
        # PREFECT_API_AUTH_STRING, or the local server's own secret (loopback only).
        headers = auth_headers(self.api_url)
        self._client = httpx.Client(
            base_url=self.api_url, timeout=10.0, transport=transport, headers=headers, verify=tls()
        )

    def __enter__(self) -> PrefectAPI:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._client.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        # A busy SQLite-backed server answers 503 ("database is locked"): retry briefly.
        for attempt in range(4):
            try:
                response = self._client.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                raise Unreachable(
                    f"Prefect API at {self.api_url}: {exc}", target="prefect"
                ) from exc
            if response.status_code != 503 or attempt == 3:
                break
            time.sleep(0.25 * 2**attempt)
        if response.status_code == 401:
            raise AuthError(
                f"Prefect API at {self.api_url} wants credentials: set PREFECT_API_AUTH_STRING"
                " (oncall's local server keeps its own in PREFECT_HOME/oncall-api-auth)",
                target="prefect",
                status=401,
            )
        if response.status_code == 404:
            raise NotFound(f"not found: {path}", target="prefect", status=404)
        if response.status_code >= 400:
            detail = response.text[:300]
            raise ProviderError(
                f"Prefect API {method} {path}: HTTP {response.status_code} {detail}",
                target="prefect",
                status=response.status_code,
            )
        return response

    def flow_runs(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        return self._call("POST", "/flow_runs/filter", json=body).json()

    def paused_runs(self, limit: int = 200) -> list[dict[str, Any]]:
        """Flow runs waiting in a Paused/Suspended state, oldest first."""
        return self.flow_runs(
            {
                "flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}},
                "sort": "EXPECTED_START_TIME_ASC",
                "limit": limit,
            }
        )

    def flow_run(self, run_id: str) -> dict[str, Any]:
        return self._call("GET", f"/flow_runs/{run_id}").json()

    def flow_name(self, flow_id: str) -> str:
        return self._call("GET", f"/flows/{flow_id}").json().get("name", "?")

    def run_inputs(self, run_id: str, prefix: str, limit: int = 20) -> list[dict[str, Any]]:
        return self._call(
            "POST",
            f"/flow_runs/{run_id}/input/filter",
            json={"prefix": prefix, "limit": limit, "exclude_keys": []},
        ).json()

    def gate(self, run: dict[str, Any]) -> dict[str, Any] | None:
        """The oncall gate record of a paused run (what the approver decides on)."""
        pause_key = ((run.get("state") or {}).get("state_details") or {}).get("pause_key") or ""
        inputs = self.run_inputs(run["id"], "oncall-gate-")
        records = [json.loads(i["value"]) for i in inputs]
        for record in records:
            if record.get("pause_key") == pause_key:
                return record
        return records[-1] if records else None

    def pausing(self, run: dict[str, Any], within_s: float = 5.0) -> dict[str, Any]:
        """The run again once Prefect has it PAUSED, when it is still RUNNING but has its
        gate recorded: the gate is announced (serve's line, Slack) a moment before the
        pause, and whoever acts on it at once must not be told "not waiting"."""
        if (run.get("state") or {}).get("type") != "RUNNING":
            return run
        if not self.run_inputs(run["id"], "oncall-gate-"):  # not about to pause
            return run
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            time.sleep(0.2)
            run = self.flow_run(run["id"])
            if (run.get("state") or {}).get("type") != "RUNNING":
                break
        return run

    def resolve_run_id(self, run_id: str) -> str:
        """A full run id from a full id or a unique prefix of a waiting run's id."""
        if len(run_id) == 36:
            return run_id
        matches = [r["id"] for r in self.paused_runs() if r["id"].startswith(run_id)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise ConfigError(f"no run waiting for approval has an id starting with {run_id!r}")
        raise ConfigError(f"{run_id!r} matches {len(matches)} waiting runs; give more characters")

    def send_input(self, run_id: str, key: str, value: dict[str, Any]) -> None:
        """Writes a flow run input: how ack/resolve/joining alerts reach an incident."""
        self._call(
            "POST",
            f"/flow_runs/{run_id}/input",
            json={"key": key, "value": json.dumps(value), "sender": "oncall-cli"},
        )

    def incident_runs(
        self, extra_tags: list[str] | None = None, *, open_only: bool = False, limit: int = 200
    ) -> list[dict[str, Any]]:
        """Incident flow runs, newest first."""
        body: dict[str, Any] = {
            "flows": {"name": {"any_": ["incident"]}},
            "flow_runs": {"tags": {"all_": ["incident", *(extra_tags or [])]}},
            "sort": "EXPECTED_START_TIME_DESC",
            "limit": limit,
        }
        if open_only:
            body["flow_runs"]["state"] = {
                "type": {"any_": ["RUNNING", "PAUSED", "PENDING", "SCHEDULED"]}
            }
        return self.flow_runs(body)

    def find_incident(self, incident_id: str) -> dict[str, Any]:
        """The flow run of ``INC-<n>`` (case-insensitive), or ConfigError."""
        ident = incident_id.upper()
        if not ident.startswith("INC-"):
            ident = f"INC-{ident}"
        runs = self.incident_runs([ident], limit=5)
        if not runs:
            raise ConfigError(f"no incident {ident} on this Prefect server")
        return runs[0]

    def latest_artifact(self, key: str) -> dict[str, Any] | None:
        found = self._call(
            "POST",
            "/artifacts/latest/filter",
            json={"artifacts": {"key": {"any_": [key]}}, "limit": 1},
        ).json()
        return found[0] if found else None

    def paused_children(self, incident_id: str) -> list[dict[str, Any]]:
        return self.flow_runs(
            {
                "flow_runs": {
                    "tags": {"all_": [f"incident:{incident_id}"]},
                    "state": {"type": {"any_": ["PAUSED"]}},
                }
            }
        )

    def events(
        self, related_run_ids: list[str], since: str, limit: int = 50
    ) -> list[dict[str, Any]]:
        """Events related to these flow runs since an ISO time, oldest first."""
        body = {
            "filter": {
                "occurred": {"since": since},
                "related": {"id": [f"prefect.flow-run.{r}" for r in related_run_ids]},
                "order": "ASC",
            },
            "limit": limit,
        }
        return self._call("POST", "/events/filter", json=body).json().get("events", [])

    def events_named(self, prefix: str, limit: int = 5000) -> list[dict[str, Any]]:
        """Every stored event whose name starts with ``prefix``, oldest first."""
        body = {"filter": {"event": {"prefix": [prefix]}, "order": "ASC"}, "limit": 50}
        page = self._call("POST", "/events/filter", json=body).json()
        events = list(page.get("events", []))
        while page.get("next_page") and len(events) < limit:
            page = self._call("GET", page["next_page"]).json()
            events += page.get("events", [])
        return events

    def deployment(self, name: str) -> dict[str, Any] | None:
        """A deployment by ``flow/deployment`` name, or None."""
        try:
            return self._call("GET", f"/deployments/name/{name}").json()
        except NotFound:
            return None

    def pool_workers(self, pool: str) -> list[dict[str, Any]]:
        """The workers of a work pool, with their status (ONLINE while they heartbeat)."""
        try:
            return self._call("POST", f"/work_pools/{pool}/workers/filter", json={}).json()
        except NotFound:
            return []

    def create_run(self, flow_name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Creates a flow run of ``flow_name``; an ``idempotency_key`` in ``body`` makes a
        repeated call return the run the first one created."""
        flow_id = self._call("POST", "/flows/", json={"name": flow_name}).json()["id"]
        return self._call("POST", "/flow_runs/", json={**body, "flow_id": flow_id}).json()

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Updates fields of a flow run (name, tags, infrastructure_pid …)."""
        self._call("PATCH", f"/flow_runs/{run_id}", json=fields)

    def resume(self, run_id: str, run_input: dict[str, Any]) -> dict[str, Any]:
        """Resumes a paused run with input; returns Prefect's orchestration result.

        A run becomes Paused a moment before its input schema is stored; a decision
        landing in that window is refused with "schema not found", so it is retried.
        """
        deadline = time.monotonic() + 5
        while True:
            result = self._call(
                "POST", f"/flow_runs/{run_id}/resume", json={"run_input": run_input}
            ).json()
            reason = str((result.get("details") or {}).get("reason", ""))
            if "schema not found" not in reason or time.monotonic() > deadline:
                return result
            time.sleep(0.2)

    def set_state(self, run_id: str, state_type: str, message: str) -> dict[str, Any]:
        """Forces a flow run into a state (e.g. CRASHED for a run whose process is gone)."""
        body = {"state": {"type": state_type, "message": message}, "force": True}
        return self._call("POST", f"/flow_runs/{run_id}/set_state", json=body).json()

    # --- what reports read and write (flows/kpi): the same REST API, page by page ---------

    def all_flow_runs(self, body: dict[str, Any], page: int = 200) -> list[dict[str, Any]]:
        """Every flow run the filter matches (Prefect answers at most 200 per call)."""
        runs: dict[str, dict[str, Any]] = {}
        offset = 0
        while True:
            batch = self.flow_runs({**body, "limit": page, "offset": offset})
            for run in batch:  # a run created meanwhile shifts the pages: count each once
                runs.setdefault(run["id"], run)
            if len(batch) < page:
                return list(runs.values())
            offset += page

    def all_events(self, event_filter: dict[str, Any]) -> list[dict[str, Any]]:
        """Every event the filter matches, oldest first unless it says otherwise (pages of 50)."""
        page = self._call(
            "POST", "/events/filter", json={"filter": event_filter, "limit": 50}
        ).json()
        events = list(page.get("events", []))
        while page.get("next_page"):
            # Follow the token on our own base URL (the link names the server as it saw itself).
            token = httpx.URL(page["next_page"]).params.get("page-token")
            if not token:
                break
            page = self._call("GET", "/events/filter/next", params={"page-token": token}).json()
            events += page.get("events", [])
        return events

    def emit_events(self, events: list[dict[str, Any]]) -> None:
        """Records events (each with ``id``, ``occurred``, ``event``, ``resource`` …)."""
        self._call("POST", "/events", json=events)

    def artifacts(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        return self._call("POST", "/artifacts/filter", json=body).json()

    def latest_artifacts(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The latest version of each artifact key the filter matches."""
        return self._call("POST", "/artifacts/latest/filter", json=body).json()

    def create_artifact(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/artifacts/", json=body).json()

    def server_settings(self) -> dict[str, Any]:
        """The server's own settings (retention of events and runs; secrets obscured)."""
        return self._call("GET", "/admin/settings").json()
