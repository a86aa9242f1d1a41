"""``oncall.yaml``: services and their targets, routing, escalation, notifications, SLAs.

Found at ``--config``, ``$ONCALL_CONFIG`` or ``./oncall.yaml``. Validated by
pydantic; every error is one line naming the file, the line and the field.
Secrets are references — ``${ENV_VAR}`` or ``prefect-secret:NAME`` — resolved
at load time and held as ``SecretStr``; a literal token, key or password is
refused, so configuration files can be committed and shown.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

from checks.findings import Severity
from checks.sla import DEFAULT_SLA, Sla
from integrations.errors import ConfigError, SecretError
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
    "configured_service",
    "find_config",
    "load_config",
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
        default_factory=lambda: {
            Severity.P0: 300,
            Severity.P1: 900,
            Severity.P2: 1800,
            Severity.P3: None,
        },
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


# --- loading -------------------------------------------------------------------------

_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_PREFECT_SECRET = "prefect-secret:"


def _resolve_secret_block(name: str) -> str:
    try:
        from prefect.blocks.system import Secret

        return str(Secret.load(name).get())
    except Exception as exc:  # Prefect raises ValueError/ObjectNotFound/HTTP errors here
        raise SecretError(f"prefect-secret:{name} cannot be loaded ({type(exc).__name__})") from exc


def _substitute(value: Any, path: tuple, refs: set[tuple]) -> Any:
    """Resolves references in every string; records where they were."""
    if isinstance(value, dict):
        return {k: _substitute(v, (*path, k), refs) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, (*path, i), refs) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    if value.startswith(_PREFECT_SECRET):
        refs.add(path)
        return _resolve_secret_block(value[len(_PREFECT_SECRET) :].strip())

    def env(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        error = SecretError(f"environment variable {name} is not set")
        error.path = path  # type: ignore[attr-defined]
        raise error

    if _REF.search(value):
        refs.add(path)
        return _REF.sub(env, value)
    return value


def _node_line(node: yaml.Node | None, loc: tuple) -> int | None:
    """The line of the deepest YAML node on the path ``loc``."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(key):
                    node, line = v, k.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


# Secret fields that may be written literally when they carry no password (a DSN with
# trust auth); tokens, keys and webhook URLs are always references.
_CONNECTION_FIELDS = {"dsn", "url", "amqp_url", "redis_url"}


def _credential_free(text: str) -> bool:
    """A URL or DSN with no password, token or key in it (safe to write literally)."""
    if "://" in text:
        parts = urlsplit(text)
        return parts.password is None and "password=" not in parts.query.lower()
    return "password" not in text.lower() and "://" not in text and "=" in text


def _literal_secrets(model: Any, raw: Any, path: tuple, refs: set[tuple]) -> list[tuple]:
    """Paths of SecretStr fields written as literals in the file."""
    found: list[tuple] = []
    if isinstance(model, SecretStr):
        connection_string = bool(path) and path[-1] in _CONNECTION_FIELDS
        if path not in refs and not (connection_string and _credential_free(str(raw))):
            found.append(path)
    elif isinstance(model, BaseModel) and isinstance(raw, dict):
        for name, field in type(model).model_fields.items():
            key = field.alias or name
            if key in raw:
                found += _literal_secrets(getattr(model, name), raw[key], (*path, key), refs)
    elif isinstance(model, dict) and isinstance(raw, dict):
        for key, value in model.items():
            raw_key = key.value if hasattr(key, "value") else key
            if raw_key in raw:
                found += _literal_secrets(value, raw[raw_key], (*path, raw_key), refs)
    elif isinstance(model, list) and isinstance(raw, list):
        for i, (value, raw_value) in enumerate(zip(model, raw, strict=False)):
            found += _literal_secrets(value, raw_value, (*path, i), refs)
    return found


def find_config(explicit: str | None = None) -> Path | None:
    """``--config``, then ``$ONCALL_CONFIG``, then ``./oncall.yaml``; None when there is none."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"configuration file {explicit} does not exist")
        return path
    if env := os.environ.get("ONCALL_CONFIG"):
        path = Path(env)
        if not path.is_file():
            raise ConfigError(f"ONCALL_CONFIG={env} does not exist")
        return path
    path = Path("oncall.yaml")
    return path if path.is_file() else None


# libyaml when PyYAML has it: the pure-Python loader takes ~1 s for 5,000 endpoints.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_config(path: str | Path | None = None, *, text: str | None = None) -> OncallConfig:
    """Reads, resolves and validates a configuration; ConfigError names file, line and field."""
    where = str(path) if path else "<config>"
    if text is None:
        if path is None:
            return OncallConfig()
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read: {exc.strerror}") from exc
    try:
        raw = yaml.load(text, Loader=_LOADER) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}{line}: invalid YAML: {problem}") from None

    def line_of(loc: tuple) -> int | None:  # only on errors: composing again costs a parse
        return _node_line(yaml.compose(text, Loader=_LOADER), loc)

    if not isinstance(raw, dict):
        raise ConfigError(f"{where}:1: the top level must be a mapping (services:, routing: …)")
    for name, service in (raw.get("services") or {}).items():
        if isinstance(service, dict):
            service.setdefault("name", name)
    refs: set[tuple] = set()
    try:
        resolved = _substitute(raw, (), refs)
    except SecretError as exc:
        loc = getattr(exc, "path", ())
        field = ".".join(str(p) for p in loc)
        line = line_of(loc) if loc else None
        raise ConfigError(f"{where}:{line or '?'}: {field}: {exc}") from None
    try:
        config = OncallConfig.model_validate(resolved)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        line = line_of(loc)
        field = ".".join(str(p) for p in loc) or "(top level)"
        raise ConfigError(f"{where}:{line or '?'}: {field}: {err['msg']}") from None
    literals = _literal_secrets(config, raw, (), refs)
    if literals:
        loc = literals[0]
        field = ".".join(str(p) for p in loc)
        raise ConfigError(
            f"{where}:{line_of(loc) or '?'}: {field}: secrets must be references"
            " (${ENV_VAR} or prefect-secret:NAME), not literals"
        )
    from runbooks.catalog import RUNBOOKS

    for i, route in enumerate(config.routing):
        for name in route.runbooks:
            if name not in RUNBOOKS:
                line = line_of(("routing", i, "runbooks"))
                raise ConfigError(
                    f"{where}:{line}: routing.{i}.runbooks: unknown runbook {name!r}"
                    f" (known: {', '.join(RUNBOOKS)})"
                )
        if route.service and route.service not in config.services:
            line = line_of(("routing", i, "service"))
            raise ConfigError(f"{where}:{line}: routing.{i}.service: no service {route.service!r}")
    config.path = where
    return config


def configured_service(name: str) -> Service:
    """The service of that name in the oncall.yaml this process uses (``find_config``)."""
    path = find_config()
    if path is None:
        raise ConfigError(
            f"service {name!r} given by name, but there is no oncall.yaml"
            " (set ONCALL_CONFIG, as `oncall serve` and prefect.yaml do)"
        )
    return load_config(path).service(name)
