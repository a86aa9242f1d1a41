"""The drill's embedded PostgreSQL: made from scratch once, then from a kept template."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest

from flows.drills.sandbox.postgres import EmbeddedPostgres


@pytest.fixture
def own_tempdir(monkeypatch):
    """Templates go to a directory of this test's own (tempfile.gettempdir() reads this).

    Not pytest's tmp_path: as root, pgserver runs PostgreSQL as its own user, which cannot
    enter /tmp/pytest-of-root (mode 0700); the drill itself uses the system temp directory.
    """
    path = Path(tempfile.mkdtemp(prefix="oncall-test-pg-", dir=tempfile.gettempdir()))
    path.chmod(0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


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
