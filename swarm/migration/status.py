"""What a user reads about a migration: ``status --json``, the final counts, the dead letters."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from swarm.core.errors import DatabaseError
from swarm.migration.index import index_progress
from swarm.migration.record import Migration
from swarm.store.db import Database, one


def legacy_summary(check: dict[str, Any]) -> str:
    """One line of what the baseline proved about the legacy column (``status``, the report, ``rollback``)."""
    verdict = {True: "untouched by swarm", False: "CHANGED", None: "not proved"}[check.get("legacy_intact")]
    return (
        f"{verdict} ({check.get('legacy_rows_unchanged', '-')} rows as planned, "
        f"{check.get('rows_changed_by_application', '-')} changed by the application, "
        f"{check.get('rows_inserted', '-')} inserted, {check.get('rows_deleted', '-')} deleted)"
    )


def finish_counts(conn: psycopg.Connection, m: Migration) -> tuple[int, int, int]:
    """(rows_total, rows_done, rows_failed) as they stand in the table now."""
    total = one(conn.execute(m.target.count_rows()).fetchone(), "the count of the table's rows")[0]
    done = one(conn.execute(m.target.count_with_vector()).fetchone(), "the count of new vectors")[0]
    failed = one(
        conn.execute(
            sql.SQL(
                "SELECT count(*) FROM swarm.dead_letters d WHERE d.migration_id = %s AND EXISTS ("
                "SELECT 1 FROM {t} t WHERE t.{id}::text = d.row_id AND t.{new} IS NULL)"
            ).format(t=m.target.t, id=m.target.id, new=m.target.new),
            [m.id],
        ).fetchone(),
        "the count of failed rows",
    )[0]
    return int(total), int(done), int(failed)


def status(conn: psycopg.Connection, m: Migration) -> dict[str, Any]:
    """The status a user reads (``status --json``)."""
    shards = conn.execute(
        "SELECT shard_id, state, rows_done, rows_failed, rows_planned, worker, attempt, error "
        "FROM swarm.shards WHERE migration_id = %s ORDER BY shard_id",
        [m.id],
    ).fetchall()
    final = one(
        conn.execute(
            "SELECT rows_done, rows_failed, rows_total, extract(epoch FROM coalesce(finished_at, now()) - started_at), "
            "rollout_percent FROM swarm.migrations WHERE id = %s",
            [m.id],
        ).fetchone(),
        f"migration {m.id} in swarm.migrations",
    )
    rows_done_final, rows_failed_final, rows_total, elapsed, rollout = final
    pending, oldest = queue_lag(conn, m.id)
    extra = one(
        conn.execute(
            "SELECT to_jsonb(m) -> 'lag', to_jsonb(m) -> 'sizes' FROM swarm.migrations m WHERE id = %s", [m.id]
        ).fetchone(),
        f"migration {m.id} in swarm.migrations",
    )
    measured, sizes = (extra[0] or {}), (extra[1] or {})
    checked = conn.execute(
        "SELECT kind, detail FROM swarm.events WHERE migration_id = %s "
        "AND kind IN ('completed', 'rollback', 'retired') AND detail ? 'legacy_intact' ORDER BY id DESC LIMIT 1",
        [m.id],
    ).fetchone()
    truncated = one(
        conn.execute(
            "SELECT coalesce(sum(truncated), 0) FROM swarm.batches WHERE migration_id = %s", [m.id]
        ).fetchone(),
        "the count of truncated texts",
    )[0]
    rate = one(
        conn.execute(
            "SELECT coalesce(sum(rows), 0), extract(epoch FROM max(at) - min(at)) FROM swarm.batches "
            "WHERE migration_id = %s AND at > now() - interval '30 seconds'",
            [m.id],
        ).fetchone(),
        "the rate of the last 30 s",
    )
    shard_done = sum(s[2] for s in shards)
    shard_failed = sum(s[3] for s in shards)
    rows_done = rows_done_final if rows_done_final is not None else min(shard_done, rows_total)
    rows_failed = rows_failed_final if rows_failed_final is not None else shard_failed
    rps = float(rate[0]) / float(rate[1]) if rate[1] and float(rate[1]) > 0 else None
    remaining = max(0, rows_total - rows_done - rows_failed)
    return {
        "migration": m.name,
        "id": m.id,
        "state": m.state,
        "phase": m.phase,
        "table": m.target.table,
        "column": m.target.new_column,
        "column_type": f"{m.column_type}({m.dimension})",
        "model": m.model_id,
        "rehearsal": m.rehearsal,
        "rows_total": int(rows_total),
        "rows_done": int(rows_done),
        "rows_failed": int(rows_failed),
        "rows_truncated": int(truncated),
        "pending_changes": int(pending),
        "follow_lag": {
            # Read from the queue now, whatever runs or not; the rates are the coordinator's last measure.
            "queued": int(pending),
            "oldest_seconds": round(oldest, 1) if oldest is not None else None,
            "arrival_rows_per_second": measured.get("arrival_rows_per_second"),
            "embed_rows_per_second": measured.get("embed_rows_per_second"),
            "falling_behind": bool(measured.get("falling_behind")) and int(pending) > 0,
            "last_error": measured.get("last_error"),
        },
        "sizes": sizes,
        "legacy_check": (
            {"at": checked[0], **{k: v for k, v in checked[1].items() if k.startswith(("legacy_", "rows_"))}}
            if checked
            else None
        ),
        "rows_per_second": round(rps, 1) if rps else None,
        "eta_seconds": round(remaining / rps, 1) if rps and m.state == "running" else None,
        "elapsed_seconds": round(float(elapsed), 1) if elapsed is not None else None,
        "rollout_percent": float(rollout),
        "index": m.index_name,
        "index_progress": index_progress(conn, m.id) if m.phase == "index" else None,
        "reason": m.reason,
        "shards": [
            {
                "id": s[0],
                "state": s[1],
                "rows_done": int(s[2]),
                "rows_failed": int(s[3]),
                "rows_planned": int(s[4]),
                "worker": s[5],
                "attempts": int(s[6]),
                "error": s[7],
            }
            for s in shards
        ],
    }


def queue_lag(conn: psycopg.Connection, mid: int) -> tuple[int, float | None]:
    """(changed rows waiting in the queue, age in seconds of the oldest)."""
    n, oldest = one(
        conn.execute(
            "SELECT count(*), extract(epoch FROM now() - min(at)) FROM swarm.changes WHERE migration_id = %s", [mid]
        ).fetchone(),
        "the queue's length",
    )
    return int(n), float(oldest) if oldest is not None else None


def record_lag(conn: psycopg.Connection, mid: int, lag: dict[str, Any]) -> None:
    """The coordinator's last measure of the follow lag (rates in and out), for ``status``."""
    import json

    conn.execute("UPDATE swarm.migrations SET lag = %s WHERE id = %s", [json.dumps(lag), mid])


def dead_letters(conn: psycopg.Connection, mid: int, limit: int = 100) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT row_id, reason FROM swarm.dead_letters WHERE migration_id = %s ORDER BY at LIMIT %s",
        [mid, limit],
    ).fetchall()
    return [{"row_id": r[0], "reason": r[1]} for r in rows]


def check_connection(db: Database) -> None:
    try:
        db.run(lambda c: c.execute("SELECT 1"), what="ping")
    except psycopg.Error as e:
        raise DatabaseError(f"database check failed: {type(e).__name__}") from None
