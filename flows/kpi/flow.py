"""The ``kpi-report`` deployment: the KPI report as a Prefect markdown artifact, on a cron.

``oncall serve`` declares it from ``report:`` in oncall.yaml (``cron``, default weekly;
``since``, default 30 days; ``enabled``) and prefect.yaml declares the same deployment for
work pools. Each run writes the artifact ``oncall-report`` (key :data:`REPORT_KEY`): its
history on the Artifacts page is the weekly reports.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.config import parse_duration
from flows.config_load import find_config, load_config
from flows.kpi.build import REPORT_KEY, build_report, summary_line
from flows.kpi.render import report_markdown
from flows.prefect_api import PrefectAPI

__all__ = ["kpi_report"]


def _api_url() -> str:
    from prefect.settings import get_current_settings

    return str(get_current_settings().api.url or "")


@flow(name="kpi-report", log_prints=False)
def kpi_report(
    config_path: str | None = None, since: str | None = None, service: str | None = None
) -> dict[str, Any]:
    """Publishes the on-call KPI report (response times, updates, recurrence, drills)."""
    cfg = load_config(config_path or find_config())
    seconds = parse_duration(since) if since else cfg.report.since
    now = datetime.now(UTC)
    with PrefectAPI(_api_url()) as api:
        report = build_report(
            api, cfg, since=now - timedelta(seconds=seconds), now=now, service=service
        )
    summary = summary_line(report)
    create_markdown_artifact(report_markdown(report), key=REPORT_KEY, description=summary)
    get_run_logger().info("KPI report: %s", summary)
    return {"summary": summary, "report": report.model_dump(mode="json")}
