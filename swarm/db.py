"""Database access: the embedded PostgreSQL, connections, and what the server allows.

With ``database.dsn`` empty, swarm starts (or reuses) a ``pgserver`` instance whose data lives in
``.swarm/pgdata``; separate CLI invocations and Ray workers share that one real server through its Unix socket.
With a DSN the same code runs against any PostgreSQL >= 14 with pgvector.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from swarm.errors import DatabaseError
from swarm.log import get_logger

if TYPE_CHECKING:
    from swarm.config import Config

log = get_logger()
T = TypeVar("T")

# Errors worth retrying: the transaction lost a race, or the connection went away (server restart,
# pg_terminate_backend). Branch on classes, never on message text.
RETRYABLE = (
    pgerrors.SerializationFailure,
    pgerrors.DeadlockDetected,
    pgerrors.LockNotAvailable,
    pgerrors.QueryCanceled,  # lock_timeout on DDL raises LockNotAvailable; statement_timeout this one
    pgerrors.AdminShutdown,
    pgerrors.CannotConnectNow,
    psycopg.OperationalError,
)


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


def connect(dsn: str, *, autocommit: bool = True, application_name: str = "swarm", **kw: Any) -> psycopg.Connection:
    """Open a connection; a failure becomes a one-line DatabaseError without the password."""
    from swarm.config import redact_dsn

    try:
        conn = psycopg.connect(dsn, autocommit=autocommit, application_name=application_name, connect_timeout=10, **kw)
    except psycopg.OperationalError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatabaseError(f"cannot connect to {redact_dsn(dsn)}: {first}") from None
    return conn


def register_vector(conn: psycopg.Connection) -> None:
    from pgvector.psycopg import register_vector as _register

    _register(conn)


@dataclass(frozen=True)
class ServerInfo:
    """What the server is and what its pgvector allows."""

    server_version: int
    pgvector_version: str | None

    @property
    def pgvector_tuple(self) -> tuple[int, ...]:
        if not self.pgvector_version:
            return (0,)
        return tuple(int(p) for p in self.pgvector_version.split(".")[:3] if p.isdigit())

    @property
    def has_halfvec(self) -> bool:
        return self.pgvector_tuple >= (0, 7)

    def column_type(self, dim: int) -> tuple[str, bool]:
        """(type, indexable) for a new column of ``dim`` dimensions.

        ``vector`` indexes up to 2000 dims; ``halfvec`` (pgvector >= 0.7) up to 4000.
        """
        if dim <= 2000:
            return "vector", True
        if self.has_halfvec:
            return "halfvec", dim <= 4000
        return "vector", False


def ensure_vector(conn: psycopg.Connection) -> ServerInfo:
    """``CREATE EXTENSION IF NOT EXISTS vector`` and report versions."""
    version = conn.info.server_version
    if version < 140000:
        raise DatabaseError(f"PostgreSQL {version // 10000} is too old; swarm needs PostgreSQL >= 14")
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    if row is None:
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except psycopg.Error as e:
            raise DatabaseError(
                f"pgvector is not available on this server ({type(e).__name__}); install pgvector and retry"
            ) from None
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    return ServerInfo(server_version=version, pgvector_version=row[0] if row else None)


class Database:
    """A reconnecting connection for one agent: ``run(fn)`` retries transient errors with backoff."""

    def __init__(
        self,
        dsn: str,
        *,
        application_name: str = "swarm",
        max_attempts: int = 8,
        idle_in_transaction_timeout_ms: int | None = None,
    ) -> None:
        self._dsn = dsn
        self._app = application_name
        # A session stuck inside a transaction (its process wedged) would hold row locks forever: let the server
        # end it. Set per session, so the application's own sessions keep their settings.
        self._options = (
            {"options": f"-c idle_in_transaction_session_timeout={int(idle_in_transaction_timeout_ms)}"}
            if idle_in_transaction_timeout_ms
            else {}
        )
        self.max_attempts = max_attempts
        self._conn: psycopg.Connection | None = None
        self.reconnects = 0

    @property
    def conn(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self.reconnects += 1
            self._conn = connect(self._dsn, autocommit=True, application_name=self._app, **self._options)
            try:
                register_vector(self._conn)
            except psycopg.ProgrammingError:
                pass  # extension not there yet (before init); callers that need vectors run after init
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def run(self, fn: Callable[[psycopg.Connection], T], *, what: str = "query") -> T:
        """Run ``fn(conn)``, retrying transient errors with exponential backoff and a reconnect."""
        delay = 0.2
        for attempt in range(1, self.max_attempts + 1):
            try:
                return fn(self.conn)
            except RETRYABLE as e:
                if isinstance(e, psycopg.OperationalError) or (self._conn is not None and self._conn.broken):
                    self.close()
                if attempt == self.max_attempts:
                    raise
                log.warning("db.retry", what=what, attempt=attempt, error=type(e).__name__)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
            except DatabaseError:
                # connect() failed: the server may be restarting.
                if attempt == self.max_attempts:
                    raise
                log.warning("db.reconnect_wait", what=what, attempt=attempt)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        conn = self.conn
        with conn.transaction():
            yield conn
