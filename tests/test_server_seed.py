"""The seed database a new local Prefect server starts from instead of migrating."""

from __future__ import annotations

import contextlib
import gzip
import importlib.metadata
import re
import sqlite3
from pathlib import Path

import prefect

from flows import server


def _sqlite_heads() -> set[str]:
    """The heads of the pinned Prefect's SQLite migrations, read from their files."""
    versions = Path(prefect.__file__).parent / "server/database/_migrations/versions/sqlite"
    revisions, parents = set(), set()
    for path in versions.glob("*.py"):
        text = path.read_text()
        revisions |= set(re.findall(r'^revision = "(\w+)"', text, re.M))
        parents |= set(re.findall(r"^down_revision = \"(\w+)\"", text, re.M))
    return revisions - parents


def test_the_seed_is_migrated_to_the_pinned_prefects_head(tmp_path):
    seed = server.SEEDS / f"prefect-{importlib.metadata.version('prefect')}.db.gz"
    assert seed.is_file(), "rebuild it: uv run python -m flows.server"
    db = tmp_path / "seed.db"
    db.write_bytes(gzip.decompress(seed.read_bytes()))
    with contextlib.closing(sqlite3.connect(db)) as conn:
        [(revision,)] = conn.execute("select version_num from alembic_version").fetchall()
        runs = conn.execute("select count(*) from flow_run").fetchone()[0]
    assert {revision} == _sqlite_heads()
    assert runs == 0


def test_a_new_database_is_seeded_and_an_existing_one_is_kept(tmp_path):
    env = {"PREFECT_HOME": str(tmp_path)}
    assert server._seed_database(env)
    db = tmp_path / "prefect.db"
    assert db.stat().st_size > 100_000
    db.write_bytes(b"mine")
    assert not server._seed_database(env)
    assert db.read_bytes() == b"mine"


def test_a_configured_database_is_never_seeded(tmp_path):
    env = {
        "PREFECT_HOME": str(tmp_path),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": "postgresql+asyncpg://u@h/db",
    }
    assert not server._seed_database(env)
    assert not (tmp_path / "prefect.db").exists()
