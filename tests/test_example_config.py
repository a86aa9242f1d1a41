"""The documented example configuration loads, and resolves its secret references."""

from __future__ import annotations

from pathlib import Path

from flows.config_load import load_config

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "oncall.example.yaml"


def test_example_config_is_valid(monkeypatch):
    for name in (
        "DATABASE_URL",
        "FLAGS_TOKEN",
        "HMS_ACCESS_KEY",
        "HMS_APP_SECRET",
        "AMQP_URL",
        "PD_IC_ROUTING_KEY",
        "SLACK_WEBHOOK_URL",
        "PD_ROUTING_KEY",
        "STATUSPAGE_API_KEY",
        "ONCALL_RECEIVER_TOKEN",
        "SLACK_SIGNING_SECRET",
        "SENTRY_CLIENT_SECRET",
        "PD_WEBHOOK_SECRET",
    ):
        value = {
            "DATABASE_URL": "postgresql://u:pw@db/app",
            "AMQP_URL": "amqp://u:pw@mq/",
            "HMS_ACCESS_KEY": "app-access-key-id",
        }.get(name, f"secret-{name}")
        monkeypatch.setenv(name, value)
    config = load_config(EXAMPLE)
    assert set(config.services) == {"api", "video", "emails"}
    assert config.services["api"].postgres.dsn.get_secret_value() == "postgresql://u:pw@db/app"
    assert [r.runbooks for r in config.routing][0] == ["db-connections"]
    assert config.escalation["P1"][1].after == 300
    assert config.receiver.cooldown == 300
    assert "secret-" not in repr(config) and ":pw@" not in repr(config)
