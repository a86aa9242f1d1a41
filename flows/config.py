"""``oncall.yaml``: services and their targets, routing, escalation, notifications, SLAs.

Found at ``--config``, ``$ONCALL_CONFIG`` or ``./oncall.yaml``. Validated by
pydantic (:mod:`flows.config_load`); every problem is reported at once, each on a
line naming the file, the line and the field.
Secrets are references — ``${ENV_VAR}`` or ``prefect-secret:NAME`` — resolved
at load time and held as ``SecretStr``; a literal token, key or password is
refused, so configuration files can be committed and shown.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, field_validator

from checks.findings import Severity
from checks.sla import DEFAULT_SLA, Sla
from integrations.errors import ConfigError
from integrations.pagerduty import PagerDutyTarget
from integrations.service import Service
from integrations.slack import SlackWebhookTarget
from integrations.statuspage import StatuspageManageTarget
from runbooks.engine.model import ApprovalPolicy

__all__ = [
    "DEFAULT_ESCALATION",
    "DEFAULT_SLA",
    "EscalationLevel",
    "Notifications",
    "ReceiverConfig",
    "HealthConfig",
    "DrillsConfig",
    "ReportConfig",
    "Verification",
    "OncallConfig",
    "Route",
    "Sla",
    "parse_duration",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: Any) -> Any:
    """'90s', '5m', '1h', '2d', 30 → seconds; None stays None."""
    if value is None or isinstance(value, int | float):
        return value
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 5m, 1h)")
    return float(match.group(1)) * _UNIT[match.group(2)]


Duration = Annotated[float, BeforeValidator(parse_duration)]
OptDuration = Annotated[float | None, BeforeValidator(parse_duration)]


def _sla_durations(value: Any) -> Any:
    """``acknowledge: 5m`` in oncall.yaml → seconds, before :class:`checks.sla.Sla` sees it."""
    if isinstance(value, dict):
        return {key: parse_duration(limit) for key, limit in value.items()}
    return value


# The table and its verdicts live in checks/sla.py, where every view reads them.
SlaConfig = Annotated[Sla, BeforeValidator(_sla_durations)]


# Seed 000 Part C step 4: how often users hear from us, by severity (s).
_UPDATE_EVERY: dict[Severity, OptDuration] = {
    Severity.P0: 300,
    Severity.P1: 900,
    Severity.P2: 1800,
    Severity.P3: None,
}


class EscalationLevel(BaseModel):
    """One step of an escalation chain: who is told, and after how long."""

    model_config = ConfigDict(extra="forbid")

    after: Duration = Field(description="Since the incident opened (or the gate started waiting)")
    name: str = Field(description="Role, e.g. 'Incident Commander'")
    slack: str | None = Field(default=None, description="Mention, e.g. <@U024BE7LH> or @ic")
    pagerduty: SecretStr | None = Field(default=None, description="Routing key of their service")


def _chain(*steps: tuple[float, str]) -> list[EscalationLevel]:
    return [EscalationLevel(after=after, name=name) for after, name in steps]


# Seed 000 Part C step 3.
DEFAULT_ESCALATION = {
    Severity.P0: _chain(
        (0, "On-call Engineer"),
        (120, "Incident Commander"),
        (300, "On-call Manager"),
        (900, "VP Engineering"),
        (1800, "CTO/Founder"),
    ),
    Severity.P1: _chain(
        (0, "On-call Engineer"),
        (300, "Incident Commander"),
        (900, "On-call Manager"),
        (1800, "VP Engineering"),
    ),
    Severity.P2: _chain((0, "On-call Engineer"), (1800, "Incident Commander")),
    Severity.P3: _chain((0, "On-call Engineer")),
}


class Notifications(BaseModel):
    """Where incidents are announced, and how often updates go out."""

    model_config = ConfigDict(extra="forbid")

    slack: SlackWebhookTarget | None = None
    pagerduty: PagerDutyTarget | None = None
    statuspage: StatuspageManageTarget | None = None
    statuspage_components: list[str] = Field(default_factory=list)
    update_every: dict[Severity, OptDuration] = Field(
        default_factory=lambda: dict(_UPDATE_EVERY),
        description="Seed 000 Part C step 4: P0 every 5 min, P1 15, P2 30",
    )
    retries: int = Field(default=3, ge=0, le=10, description="Per message, with backoff")


class Route(BaseModel):
    """Alerts matching every key of ``match`` run these runbooks.

    Keys are alert labels plus ``service``, ``source``, ``alertname`` and ``title``;
    a value starting with ``~`` is a regular expression.
    """

    model_config = ConfigDict(extra="forbid")

    match: dict[str, str] = Field(default_factory=dict)
    runbooks: list[str]
    service: str | None = Field(
        default=None, description="Whose targets to use (default: the alert's)"
    )
    params: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Per runbook")

    def matches(self, fields: dict[str, str]) -> bool:
        for key, expected in self.match.items():
            actual = fields.get(key)
            if actual is None:
                return False
            if expected.startswith("~"):
                if not re.fullmatch(expected[1:], actual):
                    return False
            elif actual != expected:
                return False
        return True


class Verification(BaseModel):
    """After remediation: healthy for ``healthy_for`` seconds, checked every ``interval``."""

    healthy_for: Duration = 60.0
    interval: Duration = 10.0
    timeout: Duration = 900.0


class ReceiverConfig(BaseModel):
    """The webhook receiver of ``oncall serve``."""

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8787, ge=1, le=65535)
    token: SecretStr | None = Field(default=None, description="Bearer token for alert senders")
    slack_signing_secret: SecretStr | None = None
    sentry_client_secret: SecretStr | None = None
    pagerduty_webhook_secrets: list[SecretStr] = Field(default_factory=list)
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    cooldown: Duration = Field(default=300.0, description="Per runbook and target")
    max_runs_per_hour: int = Field(default=20, ge=1, description="Per runbook and target")
    store: SecretStr | None = Field(
        default=None,
        description="Intake store shared by every receiver: postgresql://… (a schema"
        " oncall_intake is created there; the Prefect server's database will do). Default:"
        " SQLite under PREFECT_HOME, for one receiver",
    )
    dedup_window: Duration = Field(
        default=300.0,
        description="A repeat of the same delivery within this window is a duplicate (unless"
        " the incident it went to has closed since)",
    )
    incidents: Literal["in-process", "deployment"] = Field(
        default="in-process",
        description="in-process: an alert's incident and its runbooks run inside `oncall"
        " serve` (first finding in about a second); deployment: as deployment runs, each in"
        " its own process (runbooks suspend at their gates and free the process)",
    )


class HealthConfig(BaseModel):
    """The scheduled health sweep."""

    model_config = ConfigDict(extra="forbid")

    cron: str = "* * * * *"
    concurrency: int = Field(default=50, ge=1, le=1000)
    enabled: bool = True


class DrillsConfig(BaseModel):
    """Drills on a schedule (the ``drills`` deployment): a game day in the sandbox on this
    cron; each scorecard is kept in Prefect and a failing drill opens a P3 incident."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    cron: str = Field(
        default="0 3 1 * *", description="When (default: monthly, 03:00 UTC on the 1st)"
    )
    scenarios: list[str] = Field(
        default_factory=list, description="Scenarios to run (oncall drill --help); empty: all"
    )
    freshness: Duration = Field(
        default=32 * 86400.0,
        gt=0,
        description="A runbook whose last drill is older is stale in `oncall report` and"
        " `oncall handoff` (default: monthly — the longest gap between monthly runs, 31"
        " days, and a day's grace)",
    )

    @field_validator("scenarios")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        from flows.drills.registry import DRILLS  # plain data

        unknown = [n for n in names if n not in DRILLS]
        if unknown:
            raise ValueError(f"unknown drill(s) {', '.join(unknown)} (known: {', '.join(DRILLS)})")
        return list(dict.fromkeys(names))


class ReportConfig(BaseModel):
    """The scheduled KPI report (the ``kpi-report`` deployment, ``oncall report``)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    cron: str = Field(default="0 7 * * 1", description="When (default: weekly, Mondays 07:00 UTC)")
    since: Duration = Field(default=30 * 86400.0, gt=0, description="The period it covers")


class OncallConfig(BaseModel):
    """Everything in ``oncall.yaml``."""

    model_config = ConfigDict(extra="forbid")

    services: dict[str, Service] = Field(default_factory=dict)
    routing: list[Route] = Field(default_factory=list)
    escalation: dict[Severity, list[EscalationLevel]] = Field(
        default_factory=lambda: dict(DEFAULT_ESCALATION)
    )
    notifications: Notifications = Field(default_factory=Notifications)
    sla: dict[Severity, SlaConfig] = Field(default_factory=lambda: dict(DEFAULT_SLA))
    approvals: ApprovalPolicy = Field(default_factory=ApprovalPolicy)
    verification: Verification = Field(default_factory=Verification)
    receiver: ReceiverConfig = Field(default_factory=ReceiverConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    drills: DrillsConfig = Field(default_factory=DrillsConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    severity_rules: list[dict[str, Any]] = Field(
        default_factory=list, description="Extra rules, added to the seeds' defaults"
    )
    path: str | None = Field(default=None, exclude=True)

    def service(self, name: str) -> Service:
        if name in self.services:
            return self.services[name]
        raise ConfigError(
            f"no service {name!r} in {self.path or 'the configuration'}"
            f" (known: {', '.join(self.services) or 'none'})"
        )

    def routes_for(self, fields: dict[str, str]) -> list[Route]:
        return [route for route in self.routing if route.matches(fields)]

    def sla_for(self, severity: Severity) -> Sla:
        return self.sla.get(severity) or DEFAULT_SLA[severity]
