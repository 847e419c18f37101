"""The embedded PostgreSQL: with ``database.dsn`` empty, swarm starts (or reuses) a ``pgserver`` instance whose
data lives in ``.swarm/pgdata``; separate CLI invocations and Ray workers share that one real server through its
Unix socket, and it outlives the process that started it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from swarm.core.errors import DatabaseError
from swarm.core.log import get_logger

if TYPE_CHECKING:
    from swarm.core.config import Config

log = get_logger()


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` readable by its owner only (it holds the database and secrets).

    As root, pgserver runs PostgreSQL as its own ``pgserver`` user, which must be able to pass through this
    directory to reach ``pgdata``: others get search (x) but never read (r) permission.
    """
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o711 if os.geteuid() == 0 else 0o700)
    return path


def embedded_server(state_dir: Path) -> Any:
    """Start or reuse the embedded pgserver in ``state_dir/pgdata``; it outlives this process."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

    ensure_private_dir(state_dir)
    pgdata = state_dir / "pgdata"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs' XDG_RUNTIME_DIR notice on every start
            server = pgserver.get_server(pgdata, cleanup_mode=None)
    except Exception as e:  # pgserver raises plain exceptions with the server log
        raise DatabaseError(f"embedded PostgreSQL in {pgdata} did not start: {e}".splitlines()[0]) from e
    ensure_private_dir(state_dir)  # pgserver widens the prefix of its data directory: narrow it again
    _tune_embedded(str(server.get_uri()), pgdata)
    return server


#: shared_buffers of the embedded server. initdb's 128 MB is smaller than one hnsw index on 100k 384-dim rows
#: (~195 MB), so searches read index pages through the OS cache: p95 11.9 ms at 128 MB against 8.0 ms at
#: 512 MB (measured by `swarm bench --only search`, same index and ef_search). The memory is reserved, not
#: touched, until pages are read.
EMBEDDED_SHARED_BUFFERS_MB = 512


def _tune_embedded(uri: str, pgdata: Path) -> None:
    """Give the embedded server its shared_buffers: once per data directory, with a restart, and only while
    nobody else is connected (otherwise it waits for the next start)."""
    try:
        with psycopg.connect(uri, autocommit=True, connect_timeout=10) as conn:
            current = conn.execute(
                "SELECT setting::bigint * pg_size_bytes(unit) / (1024 * 1024) FROM pg_settings "
                "WHERE name = 'shared_buffers'"
            ).fetchone()[0]
            if current >= EMBEDDED_SHARED_BUFFERS_MB:
                return
            conn.execute(
                sql.SQL("ALTER SYSTEM SET shared_buffers = {}").format(
                    sql.Literal(f"{int(EMBEDDED_SHARED_BUFFERS_MB)}MB")
                )
            )
            others = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND pid <> pg_backend_pid()"
            ).fetchone()[0]
        if others:
            log.info("db.tune_deferred", shared_buffers_mb=EMBEDDED_SHARED_BUFFERS_MB, connections=others)
            return
        pg_ctl_embedded(pgdata, "restart")
        log.info("db.tuned", shared_buffers_mb=EMBEDDED_SHARED_BUFFERS_MB)
    except Exception as e:  # a slower search is no reason to fail: say so and go on
        log.warning("db.tune_failed", error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def resolve_dsn(cfg: Config) -> str:
    """The DSN to connect with: the configured one, or the embedded server's (started if needed)."""
    dsn = cfg.database.dsn.get_secret_value()
    if dsn:
        return dsn
    return str(embedded_server(cfg.state_dir).get_uri())


def pg_ctl_embedded(pgdata: Path, *args: str) -> None:
    """Run pg_ctl on the embedded server as the user pgserver runs it as (``pgserver`` when we are root)."""
    from pgserver._commands import pg_ctl  # type: ignore[import-not-found]

    user = "pgserver" if os.geteuid() == 0 else None
    pg_ctl(["-w", "-m", "fast", *args], pgdata=pgdata, user=user)


def stop_embedded(state_dir: Path) -> bool:
    """Stop the embedded server if it runs. Returns whether it was running."""
    pgdata = state_dir / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
        return False
    pg_ctl_embedded(pgdata, "stop")
    return True
