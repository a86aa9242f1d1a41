"""The Prefect UI path: an engineer approves a waiting runbook in the browser.

Everything is real: the session's Prefect server (``prefect_api``) with oncall's basic
auth, PostgreSQL with idle-in-transaction sessions (``faults``), ``oncall run
db-connections`` in a subprocess without a terminal (so it waits at its gate), and
Debian's Chromium, headless, driven by Playwright through both UIs that Prefect 3.9.1
serves: the classic Vue UI that the link printed by ``oncall`` opens
(``/runs/flow-run/<id>``) and the React UI that the dashboard defaults to
(``/v2/runs/flow-run/<id>``). The engineer logs in with the server's secret, reads the
evidence and the exact plan in the approval artifact while the run is paused, and
decides in a form that asks only for the decision and a reason. The classic run saves
screenshots of the artifact and the filled form to the test's temp dir; with
``ONCALL_UPDATE_DOCS=1`` it refreshes ``docs/approval-artifact.png`` and
``docs/approval-form.png`` (a test run never edits the checkout otherwise).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.prefect_api import PrefectAPI
from flows.server import auth_headers
from integrations.errors import OncallError

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed (uv sync --dev)"
)
expect = sync_api.expect

CHROMIUM = Path("/usr/bin/chromium")
# A fresh profile and no background services: without the background-networking
# flags Chromium keeps calling Google on a network that answers nothing.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Checked before any fixture runs, so a machine without Chromium skips in no time.
pytestmark = [
    pytest.mark.skipif(
        not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)),
        reason=f"Debian's chromium package is not installed ({CHROMIUM} missing):"
        " apt-get install -y chromium",
    ),
    pytest.mark.usefixtures("prefect_api"),
]
# Tall enough that the whole resume form (evidence, plan and fields) fits on screen.
# 1400 px wide: the artifact with the evidence and the plan must read there without cuts.
VIEWPORT = {"width": 1400, "height": 1600}
STEP_MS = 15_000  # the longest any single browser step may take
DOCS = Path(__file__).resolve().parents[2] / "docs"
UPDATE_DOCS = os.environ.get("ONCALL_UPDATE_DOCS") == "1"
REASON = "PIDs match the evidence; ending the stale sessions"
REPORT_CARD = re.compile(r"^db-connections-")  # the report artifact's key, as shown on its card
REQUEST_CARD = re.compile(r"^approval-db-connections")  # the approval request's key
# Emoji and pictographs: Chromium without an emoji font draws them as empty boxes.
BOXES = re.compile("[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\ufe0f]")


# --- Selectors: every DOM detail of Prefect 3.9.1's two UIs lives below. -------------
# Found by reading page.content() of a paused run in each UI. The classic UI
# (prefect-design, Vue) renders form labels that are not tied to their inputs and
# tabs as <li> without role=tab, so fields are found by their label text inside a
# `.schema-form-property`; the React UI (Radix) ties labels to inputs, so
# get_by_label works. Everything else is roles and visible text.


class ClassicUI:
    """Prefect's classic (Vue) UI: the page the link printed by ``oncall`` opens."""

    @staticmethod
    def run_url(base: str, run_id: str) -> str:
        return f"{base}/runs/flow-run/{run_id}"

    @staticmethod
    def open_resume_form(page: Any) -> Any:
        page.get_by_role("button", name="Resume", exact=True).click()
        return page.get_by_role("dialog")

    @staticmethod
    def _property(form: Any, label: str) -> Any:
        title = form.page.locator(
            ".schema-form-property__label", has_text=re.compile(rf"^{label}\b")
        )
        return form.locator(".schema-form-property").filter(has=title)

    @classmethod
    def switch(cls, form: Any, label: str) -> Any:
        return cls._property(form, label).get_by_role("switch")

    @classmethod
    def text_field(cls, form: Any, label: str) -> Any:
        return cls._property(form, label).locator("textarea")

    @staticmethod
    def submit(form: Any) -> None:
        form.get_by_role("button", name="Submit", exact=True).click()

    @staticmethod
    def open_report(page: Any, card: re.Pattern = REPORT_CARD) -> None:
        page.get_by_role("tablist").get_by_text("Artifacts", exact=True).click()
        page.get_by_text(card).first.click()


class ReactUI:
    """Prefect's V2 (React) UI, where the dashboard lands by default."""

    @staticmethod
    def run_url(base: str, run_id: str) -> str:
        return f"{base}/v2/runs/flow-run/{run_id}"

    @staticmethod
    def open_resume_form(page: Any) -> Any:
        page.get_by_role("button", name="Open menu").first.click()  # the run's ⋮ menu
        page.get_by_role("menuitem", name="Resume").click()
        return page.get_by_role("dialog")

    @staticmethod
    def switch(form: Any, label: str) -> Any:
        return form.get_by_label(re.compile(rf"^{label}\b"))

    @staticmethod
    def text_field(form: Any, label: str) -> Any:
        return form.get_by_label(re.compile(rf"^{label}\b"))

    @staticmethod
    def submit(form: Any) -> None:
        form.get_by_role("button", name="Resume", exact=True).click()

    @staticmethod
    def open_report(page: Any, card: re.Pattern = REPORT_CARD) -> None:
        page.get_by_role("tab", name="Artifacts").click()
        page.get_by_text(card).first.click()  # 3.9.1: opens the newest version


# --- Plumbing ---------------------------------------------------------------------


def _point_ui_at(context: Any, api_url: str) -> None:
    """Makes the UI call the server under test.

    ``flows.server.start`` runs Prefect's server (``flows.prefect_app``) on port N without
    PREFECT_API_URL or PREFECT_UI_API_URL in its environment, and Prefect 3.9.1 then
    serves ``/ui-settings`` with ``api_url`` http://127.0.0.1:4200/api whatever N is,
    so on a free test port the UI would show another server's runs, or none.
    """

    def handle(route: Any) -> None:
        response = route.fetch()
        settings = response.json()
        if settings.get("api_url") != api_url:
            warnings.warn(
                f"the Prefect UI is configured to call {settings.get('api_url')}, not the"
                f" server it is served from ({api_url}); set PREFECT_UI_API_URL when"
                " starting the server",
                stacklevel=1,
            )
            settings["api_url"] = api_url
        route.fulfill(response=response, json=settings)

    context.route(re.compile(r"/ui-settings(\?.*)?$"), handle)


def _log_in(page: Any, base: str) -> None:
    """The UI asks for the server's basic-auth secret (Prefect's login page) once."""
    page.goto(f"{base}/login")
    password = page.locator("input[type=password]")
    expect(password).to_be_visible()
    password.fill(os.environ["PREFECT_API_AUTH_STRING"])
    page.get_by_role("button", name="Login").click()
    expect(password).to_be_hidden()


@pytest.fixture
def page(prefect_api, tmp_path):
    """A page in Debian's headless Chromium with a fresh profile, pointed at the test server."""
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=VIEWPORT,
            timeout=30_000,
        )
        try:
            context.set_default_timeout(STEP_MS)
            context.set_default_navigation_timeout(STEP_MS)
            _point_ui_at(context, prefect_api)
            yield context.new_page()
        finally:
            context.close()


class WaitingRun:
    """``oncall run db-connections`` in a subprocess with no terminal, paused at its gate."""

    def __init__(self, proc: subprocess.Popen, out: Path, err: Path, run_id: str) -> None:
        self.proc, self._out, self._err, self.run_id = proc, out, err, run_id

    def finish(self, timeout: float) -> tuple[int, dict[str, Any], str]:
        """Waits for the CLI to exit; returns its exit code, JSON report and stderr."""
        code = self.proc.wait(timeout=timeout)
        err = self._err.read_text()
        assert self._out.read_text().strip(), f"no report on stdout; stderr:\n{err[-2000:]}"
        return code, json.loads(self._out.read_text()), err


def _gate_ready(api: PrefectAPI, run: dict[str, Any], database: str) -> bool:
    """True once the run waits at this test's gate and its form is stored.

    A run turns Paused a moment before Prefect stores the form's schema and
    description; a form opened in that window has no fields.
    """
    gate = api.gate(run)
    if not gate or database not in str(gate.get("target")):
        return False
    keyset = (run["state"].get("state_details") or {}).get("run_input_keyset") or {}
    return bool(keyset.get("description")) and bool(
        api.run_inputs(run["id"], keyset["description"])
    )


@contextlib.contextmanager
def waiting_runbook(pgdb, prefect_api: str, tmp_path: Path) -> Iterator[WaitingRun]:
    """Starts the runbook as the CLI would at 3 a.m. and yields it once it waits."""
    out, err = tmp_path / "oncall.out", tmp_path / "oncall.err"
    with PrefectAPI(prefect_api) as api:
        before = {r["id"] for r in api.paused_runs()}
    command = [
        sys.executable, "-m", "flows.cli", "run", "db-connections", "--dsn", pgdb.dsn, "--json",
        "-p", f"database={pgdb.name}", "-p", "idle_in_transaction_seconds=1",
        "-p", "verify_timeout_seconds=5", "-p", "approval_timeout_seconds=80",
    ]  # fmt: skip
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            command,
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "COLUMNS": "200"},
        )
    run_id = None
    try:
        deadline = time.monotonic() + 45
        with PrefectAPI(prefect_api) as api:
            while run_id is None:
                assert proc.poll() is None, f"oncall exited early:\n{err.read_text()[-2000:]}"
                assert time.monotonic() < deadline, "the runbook never paused at its gate"
                fresh = [r for r in api.paused_runs() if r["id"] not in before]
                run_id = next((r["id"] for r in fresh if _gate_ready(api, r, pgdb.name)), None)
                time.sleep(0.3)
        yield WaitingRun(proc, out, err, run_id)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if run_id:  # never leave a paused run behind for `oncall pending` in later tests
            _cancel_if_paused(prefect_api, run_id)


def _cancel_if_paused(prefect_api: str, run_id: str) -> None:
    with contextlib.suppress(httpx.HTTPError, OncallError), PrefectAPI(prefect_api) as api:
        if api.flow_run(run_id)["state"]["type"] == "PAUSED":
            httpx.post(
                f"{prefect_api}/flow_runs/{run_id}/set_state",
                json={"state": {"type": "CANCELLED", "name": "Cancelled"}, "force": True},
                timeout=5,
                headers=auth_headers(prefect_api),
            ).raise_for_status()


@contextlib.contextmanager
def screenshot_on_failure(page: Any, path: Path) -> Iterator[None]:
    try:
        yield
    except BaseException as exc:
        with contextlib.suppress(Exception):
            page.screenshot(path=str(path))
            exc.add_note(f"browser screenshot at the failure: {path}")
        raise


# --- The test ---------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("ui", [ClassicUI, ReactUI], ids=["classic-ui", "v2-ui"])
def test_engineer_approves_the_plan_in_the_prefect_ui(
    ui, page, pgdb, faults, prefect_api, tmp_path
):
    idle = faults.idle_in_transaction(2)
    time.sleep(1.1)  # older than idle_in_transaction_seconds=1
    base = prefect_api.removesuffix("/api")
    with (
        waiting_runbook(pgdb, prefect_api, tmp_path) as run,
        screenshot_on_failure(page, tmp_path / "failure.png"),
    ):
        _log_in(page, base)

        # While the run is paused, its Artifacts tab holds the evidence and the exact plan.
        page.goto(ui.run_url(base, run.run_id))
        ui.open_report(page, REQUEST_CARD)
        request = page.locator("body")
        expect(request).to_contain_text("Approval needed: db-connections")
        expect(request).to_contain_text("idle_in_transaction")
        expect(request).to_contain_text("Terminate 2 session(s)")
        expect(request).to_contain_text("pg_terminate_backend() on 2 backend(s)")
        for pid in idle:
            expect(request).to_contain_text(re.compile(rf"\b{pid}\s+oncall_app\s+leaky-api\b"))
        expect(request).to_contain_text("Blast radius")
        assert not BOXES.search(request.inner_text()), "a glyph that renders as a box"
        widths = page.evaluate(
            "() => [...document.querySelectorAll('pre, table')]"
            ".map(e => [e.scrollWidth, Math.min(e.clientWidth, e.parentElement.clientWidth)])"
        )
        assert widths and all(scroll <= client + 1 for scroll, client in widths), widths
        if ui is ClassicUI:
            page.screenshot(path=str(_shot(tmp_path, "approval-artifact.png")), full_page=True)

        page.goto(ui.run_url(base, run.run_id))
        form = ui.open_resume_form(page)
        # The form: a short request with a link to that artifact, the decision and a reason.
        expect(form).to_be_visible()
        expect(form).to_contain_text("Approval needed: db-connections")
        expect(form).to_contain_text("Terminate 2 session(s)")
        link = form.get_by_role("link", name="the evidence and the exact plan")
        expect(link).to_have_attribute("href", re.compile(r"/artifacts/artifact/[0-9a-f-]{36}$"))
        for absent in ("Approver", "Channel", "Identity"):
            expect(form.get_by_text(absent, exact=True)).to_have_count(0)

        approved = ui.switch(form, "Approved")
        expect(approved).to_have_attribute("aria-checked", "false")  # nothing pre-approved
        approved.click()
        expect(approved).to_have_attribute("aria-checked", "true")
        ui.text_field(form, "Reason").fill(REASON)
        expect(ui.text_field(form, "Reason")).to_have_value(REASON)
        shot = (
            _shot(tmp_path, "approval-form.png")
            if ui is ClassicUI
            else tmp_path / "approval-form-v2.png"
        )
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot))

        resume_url = f"/api/flow_runs/{run.run_id}/resume"
        with page.expect_response(
            lambda r: r.url.endswith(resume_url) and r.request.method == "POST"
        ) as sent:
            ui.submit(form)
        assert sent.value.ok
        assert sent.value.request.post_data_json["run_input"] == {
            "approved": True,
            "reason": REASON,
        }
        assert sent.value.json()["status"] == "ACCEPT"

        code, report, stderr = run.finish(timeout=45)
        assert code == 0, stderr[-2000:]
        assert report["outcome"] == "fixed"
        [approval] = report["approvals"]
        assert approval["approved"] is True and approval["counted"] is True
        assert (approval["approver"], approval["channel"]) == ("prefect-ui", "prefect-ui")
        assert approval["reason"] == REASON and approval["identity"] == "unverified"
        [action] = report["plan"]["actions"]
        assert {i["pid"] for i in action["items"]} == set(idle)
        assert pgdb.alive(idle) == set(), "the previewed backends are gone"
        # The link the CLI printed is the page the engineer opened.
        assert f"/runs/flow-run/{run.run_id}" in "".join(stderr.split())

        # The run's report artifact, in the same UI, records who approved and how.
        page.goto(ui.run_url(base, run.run_id))
        ui.open_report(page)
        expect(page.get_by_text(re.compile(r"db-connections on .+: fixed")).first).to_be_visible()
        row = page.get_by_role("row").filter(has_text=REASON)
        # decision | approver | channel | identity | reason | at  (runbooks/engine/report.py)
        expect(row.get_by_role("cell")).to_have_text(
            ["approved", "prefect-ui", "prefect-ui", "unverified", REASON,
             re.compile(r"^\d\d:\d\d:\d\d$")]
        )  # fmt: skip


def _shot(tmp_path: Path, name: str) -> Path:
    """Where a screenshot goes: docs/ when refreshing the docs, else the test's temp dir."""
    return (DOCS if UPDATE_DOCS else tmp_path) / name
