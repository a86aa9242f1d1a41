"""oncall.yaml errors name the file, the line and the field, all at once; big files load fast."""

from __future__ import annotations

import re

import pytest
import yaml

from flows.config_load import load_config
from integrations.errors import ConfigError
from runbooks.catalog import RUNBOOKS

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


EVERYTHING_WRONG = """\
services:
  api:
    postgres:
      dsn: ${DB_URL_UNSET_1}
    http:
      - name: health
        url: 42
  emails:
    rabbitmq:
      amqp_url: ${AMQP_UNSET_2}
      queue: emails
routing:
  - match: {a: b}
    runbooks: [nope]
notifications:
  slack: {webhook_url: "https://hooks.slack.com/services/T1/B2/literal"}
receiver:
  port: 99999
  token: ${TOKEN_UNSET_3}
"""


def test_every_problem_is_reported_at_once_in_file_order(monkeypatch):
    for name in ("DB_URL_UNSET_1", "AMQP_UNSET_2", "TOKEN_UNSET_3"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError) as caught:
        load_config("oncall.yaml", text=EVERYTHING_WRONG)
    lines = str(caught.value).splitlines()
    assert lines == [
        "oncall.yaml:4: services.api.postgres.dsn: environment variable DB_URL_UNSET_1 is not set",
        "oncall.yaml:7: services.api.http.0.url: Input should be a valid string",
        "oncall.yaml:10: services.emails.rabbitmq.amqp_url: environment variable AMQP_UNSET_2"
        " is not set",
        "oncall.yaml:14: routing.0.runbooks: unknown runbook 'nope' (known: "
        + ", ".join(RUNBOOKS)
        + ")",
        "oncall.yaml:16: notifications.slack.webhook_url: secrets must be references"
        " (${ENV_VAR} or prefect-secret:NAME), not literals",
        "oncall.yaml:18: receiver.port: Input should be less than or equal to 65535",
        "oncall.yaml:19: receiver.token: environment variable TOKEN_UNSET_3 is not set",
    ]
    # An unset variable is one problem: the empty value it leaves is not also "malformed".
    assert "amqp://" not in str(caught.value)
    assert "literal" not in str(caught.value).replace("not literals", "")


def test_check_config_names_each_unset_variable(monkeypatch):
    from flows.config_load import check_config

    monkeypatch.delenv("DB_URL_UNSET_1", raising=False)
    monkeypatch.setenv("AMQP_UNSET_2", "amqp://u:pw@mq/")
    monkeypatch.setenv("TOKEN_UNSET_3", "tok")
    config, problems = check_config("oncall.yaml", text=EVERYTHING_WRONG)
    assert config is None
    assert [p.variable for p in problems if p.variable] == ["DB_URL_UNSET_1"]
    good, none = check_config("oncall.yaml", text=GOOD)
    assert none == [] and good is not None and good.path == "oncall.yaml"
