"""swarm's bookkeeping schema in the user's database: created once, idempotently, before the first write."""

from __future__ import annotations

import psycopg

from swarm.store.db import Database, ServerInfo, ensure_vector
from swarm.store.sql import BOOKKEEPING


def init_schema(db: Database) -> ServerInfo:
    """Create the bookkeeping schema (idempotent) and make sure pgvector is there."""

    def go(conn: psycopg.Connection) -> ServerInfo:
        info = ensure_vector(conn)
        # Serialize concurrent inits (two CLIs at once) on an advisory lock.
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('swarm.init'))")
            for stmt in BOOKKEEPING:
                conn.execute(stmt)
            conn.execute("ALTER TABLE swarm.migrations ADD COLUMN IF NOT EXISTS rows_done bigint")
            conn.execute("ALTER TABLE swarm.migrations ADD COLUMN IF NOT EXISTS rows_failed bigint")
            conn.execute("ALTER TABLE swarm.migrations ADD COLUMN IF NOT EXISTS phase text")
            conn.execute("ALTER TABLE swarm.shards ADD COLUMN IF NOT EXISTS failures int NOT NULL DEFAULT 0")
            # The table the migration was planned on (a table dropped and recreated under the same name is another
            # table), the follow lag the coordinator last measured, and the table's sizes at each step.
            conn.execute("ALTER TABLE swarm.migrations ADD COLUMN IF NOT EXISTS table_oid bigint")
            conn.execute("ALTER TABLE swarm.migrations ADD COLUMN IF NOT EXISTS lag jsonb")
            conn.execute("ALTER TABLE swarm.migrations ADD COLUMN IF NOT EXISTS sizes jsonb NOT NULL DEFAULT '{}'")
        return info

    return db.run(go, what="init_schema")
