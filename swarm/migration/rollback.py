"""Contract: the ends of a migration that take back what its plan installed. The one place a rollback, or the
retirement of a failed migration, is carried out, whoever asks for it (the coordinator on a failed gate,
``python -m swarm rollback``, ``rollout --auto``).

* :func:`rollback` (pgroll's explicit verb): share to 0% and a fence first (seconds), then the running index
  build is cancelled, then one DDL transaction under ``lock_timeout`` drops the sync trigger and the new column
  (or, with ``keep_data``, keeps the column and puts a guard in the trigger's place, so its vectors stay those
  of their rows' current content), then the legacy column is checked against its baseline.
* :func:`retire`: a migration that failed (an unexpected error, a table changed under it) keeps its vectors:
  the same fence and DDL as ``rollback --keep-data``, recorded as ``failed`` with the reason. Nothing of it
  is left to make a later plan's trigger misbehave; that plan adopts the column and its guard.

The fence: the phase ``rolling_back`` is written on the migration's row before anything else. Backfill batches
are fenced by their shard (set ``cancelled`` in the same transaction) and drains by that row (read ``FOR
SHARE``): after the fence commits, nothing the swarm runs writes to the table again.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from swarm.core.errors import MigrationError
from swarm.core.log import get_logger
from swarm.migration.index import cancel_build
from swarm.migration.plan import legacy_type, run_ddl
from swarm.migration.record import Migration, event, set_state
from swarm.migration.shards import stop_shards
from swarm.store.db import Database, one

if TYPE_CHECKING:
    from swarm.core.config import Config

log = get_logger()


def drop_sync(db: Database, m: Migration, cfg: Config) -> None:
    run_ddl(db, m.target.drop_sync(m.id), lock_timeout_ms=cfg.swarm.lock_timeout_ms, retries=cfg.swarm.ddl_retries)


def fence(db: Database, m: Migration) -> float:
    """Share to 0%, phase ``rolling_back``, every pending or running shard cancelled: one transaction.
    Returns how long it took (the share is 0% from its commit on)."""
    t0 = time.monotonic()

    def go(conn: psycopg.Connection) -> None:
        with conn.transaction():
            conn.execute(
                "UPDATE swarm.migrations SET rollout_percent = 0, phase = 'rolling_back', updated_at = now() "
                "WHERE id = %s",
                [m.id],
            )
            stop_shards(conn, m.id)

    db.run(go, what="fence")
    return time.monotonic() - t0


def verify_legacy(conn: psycopg.Connection, m: Migration) -> dict[str, Any]:
    """The legacy column now against its baseline taken at plan time, row by row (see
    :meth:`~swarm.store.sql.Target.verify_baseline`); ``legacy_intact`` is whether no row's legacy vector changed
    without its content changing. Without a baseline (a rehearsal, or a migration planned by an older swarm)
    the answer is ``None``: unknown, never a pass."""
    exists = one(
        conn.execute("SELECT to_regclass(%s)", [f"swarm.baseline_{m.id}"]).fetchone(), "the baseline's regclass"
    )[0]
    if exists is None:
        return {"legacy_intact": None, "legacy_check": "no baseline for this migration"}
    unchanged, legacy_only, app_changed, deleted, inserted = one(
        conn.execute(m.target.verify_baseline(m.id, legacy_type(conn, m.target))).fetchone(),
        "the comparison with the baseline",
    )
    return {
        "legacy_intact": legacy_only == 0,
        "legacy_rows_unchanged": int(unchanged),
        "legacy_changed_without_content_change": int(legacy_only),
        "rows_changed_by_application": int(app_changed),
        "rows_deleted": int(deleted),
        "rows_inserted": int(inserted),
    }


def _contract(db: Database, m: Migration, cfg: Config, *, column: str) -> tuple[int, int]:
    """Cancel the index build, then one DDL transaction: the sync trigger goes; the column goes too
    (``column="drop"``), or stays behind a guard (``"guard"``), or stays as it is (``"keep"``), without its
    invalid index. Returns (index builds cancelled, DDL attempts)."""
    cancelled = db.run(lambda c: cancel_build(c, m.id), what="cancel_index")
    t = m.target
    ddl: list[sql.Composable | None] = list(t.drop_sync(m.id))
    if column == "drop":
        # DROP INDEX CONCURRENTLY cannot run in a transaction block; the column drop takes its index with it.
        ddl.append(t.drop_column())
    else:
        if column == "guard":
            ddl += t.create_guard(m.id)
        ddl.append(_drop_invalid_index(db, m))
    # A rollback must finish: each attempt waits at most lock_timeout (the application is never queued longer),
    # and it tries for several times the plan's retries before it gives up and says how to go on.
    attempts = run_ddl(
        db,
        [s for s in ddl if s is not None],
        lock_timeout_ms=cfg.swarm.lock_timeout_ms,
        retries=3 * cfg.swarm.ddl_retries + 10,
    )
    return cancelled, attempts


def _drop_invalid_index(db: Database, m: Migration) -> sql.Composable | None:
    invalid = db.run(
        lambda c: c.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = %s AND NOT i.indisvalid",
            [m.target.index_name(m.id)],
        ).fetchone(),
        what="invalid_index",
    )
    return sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(*invalid)) if invalid else None


def rollback(db: Database, m: Migration, cfg: Config, *, reason: str, keep_data: bool = False) -> dict[str, Any]:
    """Share to 0% and fence first, then cancel the index build, then contract the schema; record why and when.

    The legacy column is never written by a migration; its baseline (taken at plan time) proves it row by row.
    """
    share_zero_s = fence(db, m)
    keep = keep_data and not m.rehearsal
    try:
        cancelled, attempts = _contract(db, m, cfg, column="guard" if keep else "drop")
    except MigrationError as e:
        why = str(e)
        db.run(lambda c: event(c, m.id, "rollback_incomplete", reason=reason, error=why), what="rollback_event")
        raise MigrationError(
            f"rollback of migration {m.id} is not finished: {why}; the share is 0% and nothing writes to the table; "
            "run `python -m swarm rollback` again"
        ) from None
    checks = db.run(lambda c: verify_legacy(c, m), what="verify_legacy")

    def record(conn: psycopg.Connection) -> None:
        with conn.transaction():
            conn.execute("DELETE FROM swarm.changes WHERE migration_id = %s", [m.id])
            conn.execute(m.target.drop_baseline(m.id))
            set_state(conn, m.id, "rolled_back", phase="rolled_back", reason=reason)
            event(
                conn,
                m.id,
                "rollback",
                reason=reason,
                keep_data=keep,
                share_zero_seconds=round(share_zero_s, 3),
                index_builds_cancelled=cancelled,
                ddl_attempts=attempts,
                **checks,
            )

    db.run(record, what="rollback_record")
    log.warning("migration.rolled_back", migration=m.id, reason=reason, legacy_intact=checks["legacy_intact"])
    return {
        "migration": m.id,
        "reason": reason,
        "dropped_column": not keep,
        "share_zero_seconds": round(share_zero_s, 3),
        "index_builds_cancelled": cancelled,
        **checks,
    }


def retire(db: Database, m: Migration, cfg: Config, *, reason: str) -> dict[str, Any]:
    """End a migration that failed: fence, cancel the index build, drop the sync trigger and keep the column
    behind a guard (its vectors are kept, and stay those of their rows' current content), record ``failed``."""
    fence(db, m)
    has_column = db.run(
        lambda c: (
            c.execute(
                "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s AND NOT attisdropped",
                [_regclass(m), m.target.new_column],
            ).fetchone()
            is not None
        ),
        what="has_column",
    )
    oid_row = db.run(lambda c: c.execute("SELECT to_regclass(%s)::oid::bigint", [_regclass(m)]).fetchone(), what="oid")
    oid = one(oid_row, "the table's oid")[0]
    # A table dropped and recreated under the same name is another table: nothing of this migration is on it.
    exists = oid is not None and (m.table_oid is None or oid == m.table_oid)
    guarded = False
    if exists:
        # Its vectors stay behind a guard only if the sync trigger kept them current until now; a trigger that
        # someone dropped leaves vectors of unknown age, which a later plan then refuses to adopt (and says so).
        from swarm.migration.plan import swarm_triggers

        synced = db.run(lambda c: f"swarm_sync_{m.id}" in swarm_triggers(c, m.target), what="triggers")
        guarded = has_column and synced and not m.rehearsal
        _contract(db, m, cfg, column="guard" if guarded else ("keep" if has_column and not m.rehearsal else "drop"))
    checks = db.run(lambda c: verify_legacy(c, m), what="verify_legacy") if exists else {}

    def record(conn: psycopg.Connection) -> None:
        with conn.transaction():
            conn.execute("DELETE FROM swarm.changes WHERE migration_id = %s", [m.id])
            conn.execute(m.target.drop_baseline(m.id))
            set_state(conn, m.id, "failed", phase="failed", reason=reason)
            event(conn, m.id, "retired", reason=reason, kept_column=has_column, guarded=guarded, **checks)

    db.run(record, what="retire_record")
    log.error("migration.failed", migration=m.id, reason=reason)
    return {"migration": m.id, "state": "failed", "reason": reason, "kept_column": has_column, **checks}


def _regclass(m: Migration) -> str:
    from swarm.store.sql import regclass_text, split_table

    return regclass_text(*split_table(m.target.table))
