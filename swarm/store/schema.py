"""swarm's bookkeeping schema in the user's database: created once, idempotently, before the first write."""

from __future__ import annotations

import psycopg

from swarm.store import querylog, routing
from swarm.store.db import Database, ServerInfo, ensure_vector
from swarm.store.sql import BOOKKEEPING


def statements() -> list[str]:
    """Every statement of the schema, in order; each is idempotent."""
    return [
        *BOOKKEEPING,
        "ALTER TABLE swarm.migrations ADD COLUMN IF NOT EXISTS rows_done bigint",
        "ALTER TABLE swarm.migrations ADD COLUMN IF NOT EXISTS rows_failed bigint",
        "ALTER TABLE swarm.migrations ADD COLUMN IF NOT EXISTS phase text",
        "ALTER TABLE swarm.shards ADD COLUMN IF NOT EXISTS failures int NOT NULL DEFAULT 0",
        # The table the migration was planned on (a table dropped and recreated under the same name is another
        # table), the follow lag the coordinator last measured, and the table's sizes at each step.
        "ALTER TABLE swarm.migrations ADD COLUMN IF NOT EXISTS table_oid bigint",
        "ALTER TABLE swarm.migrations ADD COLUMN IF NOT EXISTS lag jsonb",
        "ALTER TABLE swarm.migrations ADD COLUMN IF NOT EXISTS sizes jsonb NOT NULL DEFAULT '{}'",
        *routing.DDL,
        *querylog.DDL,
        routing.MARK_INSTALLED,
    ]


def _create(conn: psycopg.Connection) -> None:
    """Every table and function of the schema (the caller holds the advisory lock, in a transaction)."""
    for stmt in statements():
        conn.execute(stmt)


def init_schema(db: Database) -> ServerInfo:
    """Create the bookkeeping schema (idempotent) and make sure pgvector is there."""

    def go(conn: psycopg.Connection) -> ServerInfo:
        info = ensure_vector(conn)
        # Serialize concurrent inits (two CLIs at once) on an advisory lock.
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('swarm.init'))")
            _create(conn)
        return info

    return db.run(go, what="init_schema")


def ensure_serving(conn: psycopg.Connection) -> None:
    """What a router needs (the share and arm functions, the search record), created if this database lacks
    them or has an older version; nothing is written when they are there. No pgvector needed."""
    if routing.installed(conn):
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('swarm.init'))")
        if not routing.installed(conn):
            _create(conn)


async def aensure_serving(conn: psycopg.AsyncConnection) -> None:
    """The async twin of :func:`ensure_serving`."""
    if await routing.ainstalled(conn):
        return
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('swarm.init'))")
        if not await routing.ainstalled(conn):
            for stmt in statements():
                await conn.execute(stmt)
