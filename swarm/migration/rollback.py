"""Roll back (contract the expand): share to 0%, fence the migrators, drop the sync trigger and the new column,
prove the legacy column unchanged. The one place a rollback is carried out."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from swarm.core.log import get_logger
from swarm.migration.plan import legacy_checksum, run_ddl
from swarm.migration.record import Migration, event, set_state
from swarm.migration.shards import stop_shards
from swarm.store.db import Database

if TYPE_CHECKING:
    from swarm.core.config import Config

log = get_logger()


def drop_sync(db: Database, m: Migration, cfg: Config) -> None:
    run_ddl(db, m.target.drop_sync(m.id), lock_timeout_ms=cfg.swarm.lock_timeout_ms, retries=cfg.swarm.ddl_retries)


def rollback(db: Database, m: Migration, cfg: Config, *, reason: str, keep_data: bool = False) -> dict[str, Any]:
    """Share to 0% first (seconds), then stop the migrators, then contract the schema; record why and when.

    The legacy column is never written by a migration; the checksum taken at plan time proves it.
    """
    t0 = time.monotonic()
    db.run(
        lambda c: c.execute(
            "UPDATE swarm.migrations SET rollout_percent = 0, updated_at = now() WHERE id = %s", [m.id]
        ),
        what="rollout_zero",
    )
    share_zero_s = time.monotonic() - t0
    db.run(lambda c: stop_shards(c, m.id), what="stop_shards")
    ddl: list[sql.Composable] = list(m.target.drop_sync(m.id))
    dropped_column = False
    if not keep_data or m.rehearsal:
        # DROP INDEX CONCURRENTLY cannot run in a transaction block; the column drop takes the index with it
        # anyway, so only the column is dropped here.
        ddl.append(m.target.drop_column())
        dropped_column = True
    run_ddl(db, ddl, lock_timeout_ms=cfg.swarm.lock_timeout_ms, retries=cfg.swarm.ddl_retries)
    checksum = db.run(lambda c: legacy_checksum(c, m.target), what="checksum")
    intact = checksum == m.legacy_checksum

    def record(conn: psycopg.Connection) -> None:
        with conn.transaction():
            conn.execute("DELETE FROM swarm.changes WHERE migration_id = %s", [m.id])
            set_state(conn, m.id, "rolled_back", phase="rolled_back", reason=reason)
            event(
                conn,
                m.id,
                "rollback",
                reason=reason,
                keep_data=keep_data,
                legacy_intact=intact,
                share_zero_seconds=round(share_zero_s, 3),
            )

    db.run(record, what="rollback_record")
    log.warning("migration.rolled_back", migration=m.id, reason=reason, legacy_intact=intact)
    return {
        "migration": m.id,
        "reason": reason,
        "dropped_column": dropped_column,
        "legacy_intact": intact,
        "legacy_checksum": checksum,
        "share_zero_seconds": round(share_zero_s, 3),
    }
