"""Database access: connections that retry transient faults, and what the server (and its pgvector) allows.

The same code runs against the embedded server (:mod:`swarm.store.embedded`) and any PostgreSQL >= 14 with
pgvector reached through ``database.dsn``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg import errors as pgerrors

from swarm.core.errors import DatabaseError, MigrationError
from swarm.core.log import get_logger

if TYPE_CHECKING:
    pass

log = get_logger()
T = TypeVar("T")
R = TypeVar("R")

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


def connect(dsn: str, *, autocommit: bool = True, application_name: str = "swarm", **kw: Any) -> psycopg.Connection:
    """Open a connection; a failure becomes a one-line DatabaseError without the password."""
    from swarm.core.config import redact_dsn

    try:
        conn = psycopg.connect(dsn, autocommit=autocommit, application_name=application_name, connect_timeout=10, **kw)
    except psycopg.OperationalError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatabaseError(f"cannot connect to {redact_dsn(dsn)}: {first}") from None
    return conn


def one(row: R | None, what: str) -> R:
    """The row a ``fetchone()`` returned where the query yields one (an aggregate, ``RETURNING``, a row the caller
    knows is there): ``one(conn.execute(q).fetchone(), "the backfill's totals")[0]``. Without one, a
    :class:`MigrationError` that names ``what`` was expected: not a :class:`DatabaseError`, which
    :meth:`Database.run` retries and the coordinator takes for the database being away (a missing row is neither,
    and waiting will not bring it)."""
    if row is None:
        raise MigrationError(f"the database returned no row for {what}")
    return row


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
        retry_s: float | None = None,
        idle_in_transaction_timeout_ms: int | None = None,
    ) -> None:
        self.dsn = dsn
        self._app = application_name
        # A session stuck inside a transaction (its process wedged) would hold row locks forever: let the server
        # end it. Set per session, so the application's own sessions keep their settings.
        self._options = (
            {"options": f"-c idle_in_transaction_session_timeout={int(idle_in_transaction_timeout_ms)}"}
            if idle_in_transaction_timeout_ms
            else {}
        )
        self.max_attempts = max_attempts
        self.retry_s = retry_s  # with it, transient faults are retried for this long instead of max_attempts times
        self._conn: psycopg.Connection | None = None
        self.reconnects = 0

    @property
    def conn(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self.reconnects += 1
            self._conn = connect(self.dsn, autocommit=True, application_name=self._app, **self._options)
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
        """Run ``fn(conn)``, retrying transient errors with exponential backoff and a reconnect: ``max_attempts``
        times, or for ``retry_s`` seconds when that is set. Then the last error is raised."""
        delay = 0.2
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn(self.conn)
            except (*RETRYABLE, DatabaseError) as e:
                if isinstance(e, psycopg.OperationalError) or (self._conn is not None and self._conn.broken):
                    self.close()
                if self._exhausted(attempt, started, delay):
                    raise
                event = "db.reconnect_wait" if isinstance(e, DatabaseError) else "db.retry"  # connect() failed
                log.warning(event, what=what, attempt=attempt, error=type(e).__name__)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _exhausted(self, attempt: int, started: float, delay: float) -> bool:
        if self.retry_s is not None:
            return time.monotonic() - started + delay > self.retry_s
        return attempt >= self.max_attempts

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        conn = self.conn
        with conn.transaction():
            yield conn
