"""The database away: how the agents tell an outage (which pauses the work) from an error (which ends it)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg

from swarm.core.errors import DatabaseError
from swarm.store.db import Database


class DatabaseDown(Exception):
    """The database did not answer within ``swarm.db_retry_s``: the run pauses until it does."""


async def db_call(db: Database, fn: Callable[[psycopg.Connection], Any], what: str) -> Any:
    """``db.run(fn)`` in a thread; an unreachable database (after the retries of ``Database.run``) raises
    :class:`DatabaseDown`."""
    try:
        return await asyncio.to_thread(db.run, fn, what=what)
    except (psycopg.OperationalError, DatabaseError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DatabaseDown(f"{type(e).__name__}: {first}") from e
