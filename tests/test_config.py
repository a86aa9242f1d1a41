"""oncall.yaml errors name the file, the line and the field; big files load fast enough."""

from __future__ import annotations

import re

import pytest
import yaml

from flows.config import load_config
from integrations.errors import ConfigError

GOOD = """\
services:
  api:
    postgres:
      dsn: host=db.internal dbname=app user=api
    http:
      - name: health
        url: http://127.0.0.1:9/health
routing:
  - match: {alertname: "~Postgres.*"}
    runbooks: [db-connections]
"""


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config("oncall.yaml", text=text)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_good_file_loads():
    config = load_config("oncall.yaml", text=GOOD)
    assert config.services["api"].http[0].name == "health"
    assert config.routing[0].runbooks == ["db-connections"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("services:\n  api: [unclosed\n", r"^oncall\.yaml:3: invalid YAML"),
        ("- a\n- b\n", r"^oncall\.yaml:1: the top level must be a mapping"),
        (
            GOOD + "  - match: {a: b}\n    runbooks: [nope]\n",
            r"^oncall\.yaml:12: routing\.1\.runbooks: unknown runbook 'nope'",
        ),
        (
            GOOD.replace("        url: http://127.0.0.1:9/health", "        url: 42"),
            r"^oncall\.yaml:7: services\.api\.http\.0\.url: ",
        ),
        (
            GOOD.replace("host=db.internal dbname=app user=api", "postgresql://u:hunter2@db/app"),
            r"^oncall\.yaml:4: services\.api\.postgres\.dsn: secrets must be references",
        ),
    ],
    ids=["yaml", "top-level", "unknown-runbook", "bad-field", "literal-secret"],
)
def test_errors_name_the_line_and_the_field(text, expected):
    message = _error(text)
    assert re.search(expected, message), message
    assert "hunter2" not in message


def test_five_thousand_endpoints_load_with_libyaml():
    assert yaml.__with_libyaml__, "PyYAML's wheel ships libyaml on this platform"
    endpoints = [{"name": f"t{i}", "url": f"http://127.0.0.1:9/t/{i}"} for i in range(5000)]
    text = yaml.safe_dump({"services": {"fleet": {"http": endpoints}}})
    config = load_config("big.yaml", text=text)
    assert len(config.services["fleet"].http) == 5000
