"""The drill's embedded PostgreSQL: made from scratch once, then from a kept template."""

from __future__ import annotations

import tempfile

import psycopg
import pytest

from flows.drills.sandbox.postgres import EmbeddedPostgres


@pytest.fixture
def own_tempdir(tmp_path, monkeypatch):
    """Templates go to a directory of this test's own (tempfile.gettempdir() reads this)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def _usable(pg: EmbeddedPostgres) -> None:
    with psycopg.connect(pg.dsn) as conn:
        count, limit = conn.execute(
            "SELECT count(*), current_setting('max_connections') FROM accounts"
        ).fetchone()
    assert (count, limit) == (10, "17")
    with psycopg.connect(pg.app_dsn) as app:  # the application role reads and updates
        app.execute("UPDATE accounts SET balance = balance - 1 WHERE id = 1")


def test_second_server_starts_from_the_first_ones_template_and_a_broken_one_is_remade(
    own_tempdir,
):
    with EmbeddedPostgres(max_connections=17) as first:
        assert not first._from_template
        _usable(first)
        data = first._dir
    template = first._template
    assert template is not None and (template / "PG_VERSION").is_file()
    assert not (template / "postmaster.pid").exists() and not data.exists()

    with EmbeddedPostgres(max_connections=17) as second:
        assert second._from_template and second._dir != template
        _usable(second)
    assert (template / "PG_VERSION").is_file()  # the template itself is never run

    (template / "global" / "pg_control").unlink()  # broken: PostgreSQL cannot start on it
    with EmbeddedPostgres(max_connections=17) as third:
        assert not third._from_template
        _usable(third)
    assert (template / "global" / "pg_control").is_file()  # made again on the way out


def test_other_settings_get_their_own_template(own_tempdir):
    assert EmbeddedPostgres(max_connections=17)._template_path() != (
        EmbeddedPostgres(max_connections=18)._template_path()
    )
