"""Reading ``oncall.yaml``: every problem at once, each naming the file, the line and the field.

:func:`check_config` resolves the secret references, validates the schema
(:mod:`flows.config`), refuses literal secrets and checks the routing, and returns
*all* the problems it found, not the first: a newcomer with thirteen unset
environment variables learns all thirteen in one go (``oncall doctor`` lists them).
:func:`load_config` is the strict form everything else uses: the configuration, or
one ConfigError whose message has one line per problem.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, SecretStr, ValidationError

from flows.config import OncallConfig
from integrations.errors import ConfigError, SecretError
from integrations.service import Service
from runbooks.engine.model import ApprovalPolicy

__all__ = [
    "ConfigProblem",
    "check_config",
    "configured_policy",
    "configured_service",
    "find_config",
    "load_config",
]


class ConfigProblem(BaseModel):
    """One thing wrong with a configuration file."""

    file: str
    line: int | None = None
    field: str = ""
    message: str
    variable: str | None = None  # the unset environment variable, when that is the problem

    def __str__(self) -> str:
        where = f"{self.file}:{self.line or '?'}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_PREFECT_SECRET = "prefect-secret:"
# libyaml when PyYAML has it: the pure-Python loader takes ~1 s for 5,000 endpoints.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _resolve_secret_block(name: str) -> str:
    try:
        from prefect.blocks.system import Secret

        block = Secret.load(name)  # sync_compatible: the block itself, called from sync code
        if not isinstance(block, Secret):
            raise TypeError("Secret.load was called from async code")
        return str(block.get())
    except Exception as exc:  # Prefect raises ValueError/ObjectNotFound/HTTP errors here
        raise SecretError(f"prefect-secret:{name} cannot be loaded ({type(exc).__name__})") from exc


class _Resolver:
    """Resolves references in every string, records where they were and what failed.

    A reference that cannot be resolved becomes "" so validation can go on; the
    problems found under that path are the unresolved reference, nothing else.
    """

    def __init__(self) -> None:
        self.refs: set[tuple] = set()
        self.failed: list[tuple[tuple, str, str | None]] = []  # (path, message, variable)

    def __call__(self, value: Any, path: tuple = ()) -> Any:
        if isinstance(value, dict):
            return {k: self(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self(v, (*path, i)) for i, v in enumerate(value)]
        if not isinstance(value, str):
            return value
        if value.startswith(_PREFECT_SECRET):
            self.refs.add(path)
            try:
                return _resolve_secret_block(value[len(_PREFECT_SECRET) :].strip())
            except SecretError as exc:
                self.failed.append((path, str(exc), None))
                return ""
        if not _REF.search(value):
            return value
        self.refs.add(path)

        def env(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            self.failed.append((path, f"environment variable {name} is not set", name))
            return ""

        return _REF.sub(env, value)

    def covers(self, error: Mapping[str, Any]) -> bool:
        """The schema error follows from an unresolved reference: at or under the reference,
        or a model's own check (``set X, or Y and Z``) on a model holding one."""
        loc = tuple(error["loc"])
        for path, _, _ in self.failed:
            if loc[: len(path)] == path:
                return True
            if error["type"] == "value_error" and path[: len(loc)] == loc:
                return True
        return False


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
_CONNECTION_FIELDS = {"dsn", "url", "amqp_url", "redis_url", "store"}


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


def _without(data: dict[str, Any], locs: list[tuple]) -> dict[str, Any]:
    """``data`` without the sections the schema refused, so the rest can still be checked.

    A section is a top-level key's child (``services.api``, ``receiver.port``); under a
    list the whole list goes, so list positions keep matching the file's.
    """
    pruned = copy.deepcopy(data)
    for loc in locs:
        cut = loc[:1] if len(loc) < 2 or isinstance(loc[1], int) else loc[:2]
        parent: Any = pruned
        for key in cut[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict):
            parent.pop(cut[-1], None)
    return pruned


def _routing_problems(data: dict[str, Any]) -> list[tuple[tuple, str]]:
    from runbooks.catalog import RUNBOOKS

    services = data.get("services")
    known_services: dict[str, Any] = services if isinstance(services, dict) else {}
    routing = data.get("routing")
    routes: list[Any] = routing if isinstance(routing, list) else []
    found: list[tuple[tuple, str]] = []
    for i, route in enumerate(routes):
        if not isinstance(route, dict):
            continue
        listed = route.get("runbooks")
        for name in listed if isinstance(listed, list) else []:
            if name not in RUNBOOKS:
                known = ", ".join(RUNBOOKS)
                found.append(
                    (("routing", i, "runbooks"), f"unknown runbook {name!r} (known: {known})")
                )
        service = route.get("service")
        if service and service not in known_services:
            found.append((("routing", i, "service"), f"no service {service!r}"))
    return found


def check_config(
    path: str | Path | None = None, *, text: str | None = None
) -> tuple[OncallConfig | None, list[ConfigProblem]]:
    """The configuration (None when it has problems) and every problem found in it."""
    where = str(path) if path else "<config>"
    if text is None:
        if path is None:
            return OncallConfig(), []
        try:
            text = Path(path).read_text()
        except OSError as exc:
            return None, [ConfigProblem(file=where, message=f"cannot read: {exc.strerror}")]
    try:
        raw = yaml.load(text, Loader=_LOADER) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        line = mark.line + 1 if mark else None
        return None, [ConfigProblem(file=where, line=line, message=f"invalid YAML: {problem}")]
    if not isinstance(raw, dict):
        message = "the top level must be a mapping (services:, routing: …)"
        return None, [ConfigProblem(file=where, line=1, message=message)]
    for name, service in (raw.get("services") or {}).items():
        if isinstance(service, dict):
            service.setdefault("name", name)

    found: list[tuple[tuple, str, str | None]] = []
    resolve = _Resolver()
    resolved = resolve(raw)
    found += resolve.failed
    config: OncallConfig | None = None
    try:
        config = OncallConfig.model_validate(resolved)
    except ValidationError as exc:
        errors = [e for e in exc.errors() if not resolve.covers(e)]
        found += [(tuple(e["loc"]), e["msg"], None) for e in errors]
        try:  # what the schema did accept is still checked for literal secrets
            partial = OncallConfig.model_validate(
                _without(resolved, [tuple(e["loc"]) for e in exc.errors()])
            )
        except ValidationError:
            partial = None
    else:
        partial = config
    if partial is not None:
        literal = "secrets must be references (${ENV_VAR} or prefect-secret:NAME), not literals"
        found += [(loc, literal, None) for loc in _literal_secrets(partial, raw, (), resolve.refs)]
    found += [(loc, message, None) for loc, message in _routing_problems(resolved)]
    if not found:
        assert config is not None
        config.path = where
        return config, []
    tree = yaml.compose(text, Loader=_LOADER)  # only on errors: composing again costs a parse
    problems = [
        ConfigProblem(
            file=where,
            line=_node_line(tree, loc),
            field=".".join(str(p) for p in loc) or "(top level)",
            message=message,
            variable=variable,
        )
        for loc, message, variable in found
    ]
    return None, sorted(problems, key=lambda p: (p.line or 0, p.field))


def load_config(path: str | Path | None = None, *, text: str | None = None) -> OncallConfig:
    """Reads, resolves and validates a configuration.

    Raises one ConfigError naming file, line and field for every problem, one per line.
    """
    config, problems = check_config(path, text=text)
    if problems:
        raise ConfigError("\n".join(str(p) for p in problems))
    assert config is not None
    return config


# --- finding and loading -----------------------------------------------------------------


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


def configured_service(name: str) -> Service:
    """The service of that name in the oncall.yaml this process uses (``find_config``)."""
    path = find_config()
    if path is None:
        raise ConfigError(
            f"service {name!r} given by name, but there is no oncall.yaml"
            " (set ONCALL_CONFIG, as `oncall serve` and prefect.yaml do)"
        )
    return load_config(path).service(name)


def configured_policy() -> ApprovalPolicy:
    """``approvals:`` of the oncall.yaml this process uses; the defaults when there is none.

    The approval gate reads the policy here, where the run acts, on every path (CLI,
    incidents, deployment runs on a worker): never from a flow parameter.
    """
    path = find_config()
    return load_config(path).approvals if path is not None else ApprovalPolicy()
