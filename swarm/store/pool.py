"""A bounded pool of connections for the serving path (``psycopg_pool``), sync and async.

A router, and ``swarm serve`` around it, never opens more than ``serving.pool_size`` connections, whatever the
number of threads or tasks searching through it: a caller that finds every connection busy waits up to
``serving.pool_timeout_s`` and then gets :class:`~swarm.core.errors.Overloaded` (HTTP 503), never a new
connection. The pool is what stands between a burst of searches and the server's ``max_connections`` (an
application locked out of its own database by its search sidecar is the failure this prevents).

Connections are in autocommit; anything a search sets (``hnsw.ef_search``, iterative scans) is ``SET LOCAL``
inside that search's own transaction, so nothing leaks to the next user of the connection.

:meth:`Pool.run` has the signature of :meth:`swarm.store.db.Database.run` (``run(fn, what=...)``), so the alert
evaluator and ``set_percent`` run on the pool of the process they serve in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Protocol, TypeVar

import psycopg

from swarm.core.errors import DatabaseUnavailable, Overloaded
from swarm.core.log import get_logger
from swarm.store.db import RETRYABLE

log = get_logger()
T = TypeVar("T")


class Runner(Protocol):
    """What runs a function on a connection with retries: :class:`~swarm.store.db.Database` or :class:`Pool`."""

    def run(self, fn: Callable[[psycopg.Connection], T], *, what: str = ...) -> T: ...


def _configure(conn: psycopg.Connection) -> None:
    from pgvector.psycopg import register_vector

    try:
        register_vector(conn)
    except psycopg.ProgrammingError:
        pass  # no pgvector yet (before init): routing works, vector searches fail with a clear error


async def _aconfigure(conn: psycopg.AsyncConnection) -> None:
    from pgvector.psycopg import register_vector_async

    try:
        await register_vector_async(conn)
    except psycopg.ProgrammingError:
        pass


def _pool_kwargs(application_name: str, connect_timeout: int) -> dict[str, Any]:
    return {"autocommit": True, "application_name": application_name, "connect_timeout": connect_timeout}


class _Shared:
    """What the sync and async pools have in common: sizes, counters, the error a timeout becomes."""

    def __init__(self, application_name: str, max_size: int, timeout: float, max_attempts: int) -> None:
        self.application_name = application_name
        self.max_size = max_size
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.timeouts = 0  # requests that found no free connection in time (shed)
        self.retries = 0

    def _timed_out(self, stats: dict[str, int]) -> Exception:
        self.timeouts += 1
        if stats.get("pool_size", 0) == 0:
            # Not one connection: the database refuses or is away, which is not an overload.
            return DatabaseUnavailable(
                f"no connection to the database within {self.timeout:g} s ({self.application_name}); "
                "is the server up and accepting connections?"
            )
        return Overloaded(
            f"no database connection free within {self.timeout:g} s (pool of {self.max_size}, "
            f"{stats.get('requests_waiting', 0)} searches waiting); retry shortly or raise serving.pool_size"
        )


class Pool(_Shared):
    """A ``psycopg_pool.ConnectionPool`` of at most ``max_size`` connections with ``run(fn)`` retries."""

    def __init__(
        self,
        dsn: str,
        *,
        application_name: str,
        min_size: int = 1,
        max_size: int = 4,
        timeout: float = 3.0,
        max_attempts: int = 3,
        connect_timeout: int = 10,
    ) -> None:
        from psycopg_pool import ConnectionPool

        super().__init__(application_name, max_size, timeout, max_attempts)
        self._pool = ConnectionPool(
            dsn,
            min_size=min(min_size, max_size),
            max_size=max_size,
            timeout=timeout,
            kwargs=_pool_kwargs(application_name, connect_timeout),
            configure=_configure,
            name=application_name,
            open=False,
        )
        self._pool.open(wait=False)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """Borrow a connection; it goes back (rolled back first if left in a transaction, replaced if broken)
        when the block ends."""
        from psycopg_pool import PoolTimeout, TooManyRequests

        try:
            conn = self._pool.getconn()
        except (PoolTimeout, TooManyRequests):
            raise self._timed_out(self._pool.get_stats()) from None
        try:
            yield conn
        finally:
            self._pool.putconn(conn)

    def run(self, fn: Callable[[psycopg.Connection], T], *, what: str = "query") -> T:
        """``fn(conn)`` on a pooled connection; a transient error (lost connection, serialization failure) is
        retried on another connection, a full pool is not (:class:`Overloaded` at once)."""
        delay = 0.05
        for attempt in range(1, self.max_attempts + 1):
            try:
                with self.connection() as conn:
                    return fn(conn)
            except RETRYABLE as e:
                if attempt == self.max_attempts:
                    raise
                self.retries += 1
                log.warning("pool.retry", what=what, attempt=attempt, error=type(e).__name__)
                time.sleep(delay)
                delay *= 4
        raise AssertionError("unreachable")

    def stats(self) -> dict[str, int]:
        """psycopg_pool's counters (``pool_size``: connections open now, ``requests_waiting``, ...)."""
        return dict(self._pool.get_stats())

    def close(self) -> None:
        self._pool.close(timeout=5)


class AsyncPool(_Shared):
    """The async twin: a ``psycopg_pool.AsyncConnectionPool``, opened in the running event loop."""

    def __init__(
        self,
        dsn: str,
        *,
        application_name: str,
        min_size: int = 1,
        max_size: int = 4,
        timeout: float = 3.0,
        max_attempts: int = 3,
        connect_timeout: int = 10,
    ) -> None:
        from psycopg_pool import AsyncConnectionPool

        super().__init__(application_name, max_size, timeout, max_attempts)
        self._pool = AsyncConnectionPool(
            dsn,
            min_size=min(min_size, max_size),
            max_size=max_size,
            timeout=timeout,
            kwargs=_pool_kwargs(application_name, connect_timeout),
            configure=_aconfigure,
            name=application_name,
            open=False,
        )

    async def open(self) -> None:
        await self._pool.open(wait=False)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        from psycopg_pool import PoolTimeout, TooManyRequests

        try:
            conn = await self._pool.getconn()
        except (PoolTimeout, TooManyRequests):
            raise self._timed_out(self._pool.get_stats()) from None
        try:
            yield conn
        finally:
            await self._pool.putconn(conn)

    async def run(self, fn: Callable[[psycopg.AsyncConnection], Awaitable[T]], *, what: str = "query") -> T:
        delay = 0.05
        for attempt in range(1, self.max_attempts + 1):
            try:
                async with self.connection() as conn:
                    return await fn(conn)
            except RETRYABLE as e:
                if attempt == self.max_attempts:
                    raise
                self.retries += 1
                log.warning("pool.retry", what=what, attempt=attempt, error=type(e).__name__)
                await asyncio.sleep(delay)
                delay *= 4
        raise AssertionError("unreachable")

    def stats(self) -> dict[str, int]:
        return dict(self._pool.get_stats())

    async def close(self) -> None:
        await self._pool.close(timeout=5)
