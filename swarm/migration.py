"""A migration's life in the database: plan (expand), state, status, index, finish, roll back.

The database is the source of truth: a coordinator restarted by Ray, or an ``orchestrate`` run again after it
was killed, reads the migration and its shards back from ``swarm.migrations`` and ``swarm.shards``.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from swarm.db import Database, ServerInfo, ensure_vector
from swarm.errors import ConfigError, DatabaseError, DimensionMismatch, MigrationError
from swarm.log import get_logger
from swarm.sql import BOOKKEEPING, Target, split_table

if TYPE_CHECKING:
    from swarm.config import Config, SwarmConfig

log = get_logger()

TERMINAL = ("completed", "rolled_back", "failed")
REHEARSAL_COLUMN = "swarm_rehearsal"


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
        return info

    return db.run(go, what="init_schema")


# --------------------------------------------------------------------------------------------------------------
# The target table
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TableInfo:
    key_type: str
    content_type: str
    legacy_type: str | None
    legacy_dim: int | None
    new_type: str | None
    new_dim: int | None
    rows_estimate: int


_DIM = re.compile(r"^(vector|halfvec)\((\d+)\)$")


def inspect_table(conn: psycopg.Connection, cfg: Config) -> TableInfo:
    """Check the table and its columns exist as the config says; refuse a table without a primary key."""
    dbc = cfg.database
    schema, table = split_table(dbc.table)
    row = conn.execute("SELECT to_regclass(%s)::oid", [_regclass_text(schema, table)]).fetchone()
    if row is None or row[0] is None:
        raise ConfigError("database.table", dbc.table, "no such table; check the name (and its schema)")
    oid = row[0]
    cols = {
        name: ftype
        for name, ftype in conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped",
            [oid],
        ).fetchall()
    }
    pk = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s AND i.indisprimary",
        [oid],
    ).fetchall()
    if not pk:
        raise ConfigError(
            "database.table", dbc.table, "has no primary key; add one (swarm shards and checkpoints by it)"
        )
    if len(pk) > 1:
        raise ConfigError("database.table", dbc.table, "has a composite primary key; swarm needs a single-column key")
    if pk[0][0] != dbc.id_column:
        raise ConfigError("database.id_column", dbc.id_column, f"the primary key is {pk[0][0]!r}; set id_column to it")
    for key in ("content_column", "legacy_column"):
        col = getattr(dbc, key)
        if col not in cols:
            raise ConfigError(
                f"database.{key}", col, f"no such column in {dbc.table}; columns: {', '.join(sorted(cols))}"
            )
    content_type = cols[dbc.content_column]
    if content_type not in ("text", "character varying") and not content_type.startswith("character varying"):
        raise ConfigError("database.content_column", dbc.content_column, f"is {content_type}; it must be text")
    m = _DIM.match(cols[dbc.legacy_column])
    new = _DIM.match(cols.get(dbc.new_column, "")) if dbc.new_column in cols else None
    est = conn.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s", [oid]).fetchone()[0]
    return TableInfo(
        key_type=cols[dbc.id_column],
        content_type=content_type,
        legacy_type=m.group(1) if m else cols[dbc.legacy_column],
        legacy_dim=int(m.group(2)) if m else None,
        new_type=new.group(1) if new else (cols.get(dbc.new_column)),
        new_dim=int(new.group(2)) if new else None,
        rows_estimate=max(0, int(est)),
    )


def _regclass_text(schema: str | None, table: str) -> str:
    # to_regclass parses a (possibly quoted) name: quote each part so mixed case survives.
    q = lambda s: '"' + s.replace('"', '""') + '"'  # noqa: E731
    return f"{q(schema)}.{q(table)}" if schema else q(table)


def target_for(cfg: Config, key_type: str, *, rehearse: bool = False) -> Target:
    d = cfg.database
    return Target(
        table=d.table,
        id_column=d.id_column,
        content_column=d.content_column,
        legacy_column=d.legacy_column,
        new_column=REHEARSAL_COLUMN if rehearse else d.new_column,
        key_type=key_type,
    )


# --------------------------------------------------------------------------------------------------------------
# The migration record
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Migration:
    id: int
    name: str
    state: str
    phase: str | None
    target: Target
    column_type: str
    dimension: int
    model_id: str
    model_sha256: str
    rows_total: int
    rollout_percent: float
    index_name: str | None
    legacy_checksum: str | None
    rehearsal: bool
    reason: str | None
    config: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target"] = asdict(self.target)
        return d


_COLUMNS = (
    "id, name, state, phase, table_name, id_column, key_type, content_column, legacy_column, new_column, "
    "column_type, dimension, model_id, model_sha256, rows_total, rollout_percent, index_name, legacy_checksum, "
    "rehearsal, reason, config"
)


def _from_row(r: tuple[Any, ...]) -> Migration:
    (
        mid,
        name,
        state,
        phase,
        table,
        idc,
        ktype,
        content,
        legacy,
        new,
        ctype,
        dim,
        model_id,
        sha,
        rows,
        pct,
        ix,
        chk,
        rehearsal,
        reason,
        config,
    ) = r
    return Migration(
        id=mid,
        name=name,
        state=state,
        phase=phase,
        target=Target(table, idc, content, legacy, new, ktype),
        column_type=ctype,
        dimension=dim,
        model_id=model_id,
        model_sha256=sha,
        rows_total=rows,
        rollout_percent=pct,
        index_name=ix,
        legacy_checksum=chk,
        rehearsal=rehearsal,
        reason=reason,
        config=config,
    )


def load(conn: psycopg.Connection, migration_id: int) -> Migration:
    r = conn.execute(f"SELECT {_COLUMNS} FROM swarm.migrations WHERE id = %s", [migration_id]).fetchone()
    if r is None:
        raise MigrationError(f"migration {migration_id} does not exist")
    return _from_row(r)


def latest(conn: psycopg.Connection, cfg: Config | None = None, *, rehearse: bool | None = None) -> Migration | None:
    """The newest migration (of this config's table when given), or None."""
    if conn.execute("SELECT to_regclass('swarm.migrations')").fetchone()[0] is None:
        return None
    where: list[sql.Composable] = [sql.SQL("true")]
    params: list[Any] = []
    if cfg is not None:
        where.append(sql.SQL("table_name = %s"))
        params.append(cfg.database.table)
    if rehearse is not None:
        where.append(sql.SQL("rehearsal = %s"))
        params.append(rehearse)
    q = sql.SQL("SELECT {cols} FROM swarm.migrations WHERE {w} ORDER BY id DESC LIMIT 1").format(
        cols=sql.SQL(_COLUMNS), w=sql.SQL(" AND ").join(where)
    )
    r = conn.execute(q, params).fetchone()
    return _from_row(r) if r else None


def set_state(
    conn: psycopg.Connection, mid: int, state: str, *, phase: str | None = None, reason: str | None = None
) -> None:
    conn.execute(
        "UPDATE swarm.migrations SET state = %s, phase = coalesce(%s, phase), reason = coalesce(%s, reason), "
        "started_at = CASE WHEN %s = 'running' THEN coalesce(started_at, now()) ELSE started_at END, "
        "finished_at = CASE WHEN %s IN ('completed', 'rolled_back', 'failed') THEN now() ELSE NULL END, "
        "updated_at = now() WHERE id = %s",
        [state, phase, reason, state, state, mid],
    )
    event(conn, mid, "state", state=state, phase=phase, reason=reason)


def event(conn: psycopg.Connection, mid: int | None, kind: str, **detail: Any) -> None:
    conn.execute(
        "INSERT INTO swarm.events (migration_id, kind, detail) VALUES (%s, %s, %s)",
        [mid, kind, json.dumps({k: v for k, v in detail.items() if v is not None}, default=str)],
    )


# --------------------------------------------------------------------------------------------------------------
# DDL under lock_timeout
# --------------------------------------------------------------------------------------------------------------
def run_ddl(db: Database, statements: Iterable[sql.Composable], *, lock_timeout_ms: int, retries: int) -> int:
    """Run DDL in one transaction under ``lock_timeout``; retry with backoff when the lock is not granted.

    While an ALTER waits for its ACCESS EXCLUSIVE lock, every later query on the table queues behind it; a
    short lock_timeout bounds that wait, and the retry gives the application's transactions room in between.
    Returns the number of attempts it took.
    """
    stmts = list(statements)
    delay = 0.1
    for attempt in range(1, retries + 2):
        try:
            conn = db.conn
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{int(lock_timeout_ms)}ms")))
                for s in stmts:
                    conn.execute(s)
            return attempt
        except pgerrors.LockNotAvailable:
            if attempt > retries:
                raise MigrationError(
                    f"could not lock the table within {lock_timeout_ms} ms after {attempt} attempts "
                    "(a long transaction holds it); retry later or raise swarm.lock_timeout_ms"
                ) from None
            log.warning("ddl.lock_timeout", attempt=attempt, retry_in=round(delay, 2))
            time.sleep(delay)
            delay = min(delay * 2, 3.0)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------------------------
# Plan
# --------------------------------------------------------------------------------------------------------------
def legacy_checksum(conn: psycopg.Connection, target: Target) -> str:
    n, digest = conn.execute(target.legacy_checksum()).fetchone()
    return f"{n}:{digest}"


def plan(
    db: Database,
    cfg: Config,
    *,
    name: str,
    model_id: str,
    model_sha256: str,
    dimension: int,
    server: ServerInfo,
    table: TableInfo,
    rehearse: bool = False,
) -> Migration:
    """Expand: add the new column and the sync trigger, record the migration, split the table into shards."""
    conn = db.conn
    column_type, indexable = server.column_type(dimension)
    if not indexable:
        log.warning(
            "plan.no_ann_index",
            dimension=dimension,
            pgvector=server.pgvector_version,
            hint="vector indexes stop at 2000 dims, halfvec (pgvector >= 0.7) at 4000",
        )
    target = target_for(cfg, table.key_type, rehearse=rehearse)
    if not rehearse and table.new_dim is not None and table.new_dim != dimension:
        raise DimensionMismatch(
            f"{cfg.database.table}.{cfg.database.new_column}",
            table.new_dim,
            dimension,
            where="the existing column",
        )
    checksum = legacy_checksum(conn, target)
    with conn.transaction():
        mid = conn.execute(
            "INSERT INTO swarm.migrations (name, state, phase, table_name, id_column, key_type, content_column, "
            "legacy_column, new_column, column_type, dimension, model_id, model_sha256, config, legacy_checksum, "
            "rehearsal) VALUES (%s, 'planned', 'plan', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "RETURNING id",
            [
                name,
                target.table,
                target.id_column,
                target.key_type,
                target.content_column,
                target.legacy_column,
                target.new_column,
                column_type,
                dimension,
                model_id,
                model_sha256,
                json.dumps(cfg.public_dict()),
                checksum,
                rehearse,
            ],
        ).fetchone()[0]
    ddl: list[sql.Composable] = []
    if rehearse:
        ddl.append(target.drop_column())
    ddl += [
        target.add_column(column_type, dimension),
        target.create_sync_function(mid),
        target.create_sync_trigger(mid),
    ]
    try:
        attempts = run_ddl(db, ddl, lock_timeout_ms=cfg.swarm.lock_timeout_ms, retries=cfg.swarm.ddl_retries)
    except Exception as e:
        # Nothing was changed (the DDL ran in one transaction): record why, so a rerun plans afresh instead of
        # resuming a migration whose column does not exist.
        reason = f"{type(e).__name__}: {e}"
        db.run(lambda c: set_state(c, mid, "failed", phase="plan", reason=reason), what="plan_failed")
        raise
    rows = make_shards(db, mid, target, cfg.swarm.shard_rows)
    with conn.transaction():
        conn.execute("UPDATE swarm.migrations SET rows_total = %s, updated_at = now() WHERE id = %s", [rows, mid])
        event(
            conn,
            mid,
            "planned",
            rows=rows,
            column_type=column_type,
            dimension=dimension,
            ddl_attempts=attempts,
        )
    log.info("migration.planned", migration=mid, rows=rows, column_type=column_type, dimension=dimension)
    return load(conn, mid)


def make_shards(db: Database, mid: int, target: Target, shard_rows: int) -> int:
    """Split by primary-key ranges of ~``shard_rows`` rows each. Returns the row count."""
    conn = db.conn
    total = conn.execute(target.count_rows()).fetchone()[0]
    bounds = [r[0] for r in conn.execute(target.shard_bounds(), {"step": int(shard_rows)}).fetchall()]
    if bounds and len(bounds) * shard_rows == total:
        bounds = bounds[:-1]  # the last bound would leave an empty final shard
    ranges: list[tuple[str | None, str | None, int]] = []
    lo: str | None = None
    for b in bounds:
        ranges.append((lo, b, shard_rows))
        lo = b
    ranges.append((lo, None, total - shard_rows * len(bounds)))
    with conn.transaction():
        conn.execute("DELETE FROM swarm.shards WHERE migration_id = %s", [mid])
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO swarm.shards (migration_id, shard_id, lo, hi, rows_planned) VALUES (%s, %s, %s, %s, %s)",
                [(mid, i, lo_, hi_, n) for i, (lo_, hi_, n) in enumerate(ranges)],
            )
    return int(total)


# --------------------------------------------------------------------------------------------------------------
# Shards: claim, release (the coordinator's side)
# --------------------------------------------------------------------------------------------------------------
def claim_shard(conn: psycopg.Connection, mid: int, worker: str) -> tuple[int, int] | None:
    """Hand the next pending shard to ``worker``: (shard_id, attempt). The attempt number fences old owners."""
    r = conn.execute(
        "UPDATE swarm.shards SET state = 'running', worker = %s, attempt = attempt + 1, error = NULL, "
        "started_at = coalesce(started_at, now()), updated_at = now() "
        "WHERE migration_id = %s AND shard_id = ("
        "  SELECT shard_id FROM swarm.shards WHERE migration_id = %s AND state = 'pending' "
        "  ORDER BY shard_id LIMIT 1 FOR UPDATE SKIP LOCKED) "
        "RETURNING shard_id, attempt",
        [worker, mid, mid],
    ).fetchone()
    return (r[0], r[1]) if r else None


def release_shard(
    conn: psycopg.Connection, mid: int, shard_id: int, attempt: int, *, error: str, max_attempts: int
) -> str:
    """A shard's run failed: back to pending (it resumes from its checkpoint), or ``failed`` once it has failed
    ``max_attempts`` times. Returns the new state."""
    r = conn.execute(
        "UPDATE swarm.shards SET failures = failures + 1, "
        "state = CASE WHEN failures + 1 >= %s THEN 'failed' ELSE 'pending' END, error = %s, "
        "updated_at = now() WHERE migration_id = %s AND shard_id = %s AND attempt = %s AND state = 'running' "
        "RETURNING state",
        [max_attempts, error[:2000], mid, shard_id, attempt],
    ).fetchone()
    return r[0] if r else "unchanged"


def requeue_running(conn: psycopg.Connection, mid: int) -> int:
    """After a coordinator restart: shards left 'running' go back to pending (their owners are fenced)."""
    return conn.execute(
        "UPDATE swarm.shards SET state = 'pending', updated_at = now() WHERE migration_id = %s AND state = 'running'",
        [mid],
    ).rowcount


# --------------------------------------------------------------------------------------------------------------
# Index, finish
# --------------------------------------------------------------------------------------------------------------
def ivfflat_lists(rows: int) -> int:
    """pgvector's guidance: rows/1000 up to 1M rows, sqrt(rows) above."""
    return max(1, rows // 1000) if rows <= 1_000_000 else max(1, int(math.sqrt(rows)))


def index_settings(m: Migration) -> SwarmConfig:
    """The ``[swarm]`` section the migration was planned with (its index parameters; defaults for keys a
    migration planned by an older swarm did not record)."""
    from swarm.config import SwarmConfig

    recorded = (m.config or {}).get("swarm") or {}
    return SwarmConfig.model_validate({k: v for k, v in recorded.items() if k in SwarmConfig.model_fields})


def build_index(
    db: Database, m: Migration, method: str, server: ServerInfo, swarm: SwarmConfig | None = None
) -> str | None:
    """CREATE INDEX CONCURRENTLY on the new column; returns its name, or None when not indexable.

    The parameters (``hnsw_m``, ``hnsw_ef_construction``, ``index_build_memory_mb``; ivfflat's lists follow the
    row count) come from ``swarm``, else from the config the migration was planned with, so a resumed migration
    builds the index it planned.
    """
    if method == "none":
        return None
    column_type, indexable = server.column_type(m.dimension)
    if not indexable:
        log.warning("index.skipped", dimension=m.dimension, reason="too many dimensions for an ANN index here")
        return None
    s = swarm if swarm is not None else index_settings(m)
    opclass = f"{m.column_type}_cosine_ops"
    lists = None
    if method == "ivfflat":
        lists = ivfflat_lists(db.run(lambda c: c.execute(m.target.count_with_vector()).fetchone()[0], what="count"))
    create = m.target.create_index(m.id, method, opclass, lists, m=s.hnsw_m, ef_construction=s.hnsw_ef_construction)

    def go(conn: psycopg.Connection) -> None:
        # A failed CONCURRENTLY build leaves an INVALID index behind: drop it before trying again.
        valid = conn.execute(
            "SELECT i.indisvalid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid WHERE c.relname = %s",
            [m.target.index_name(m.id)],
        ).fetchone()
        if valid is not None and not valid[0]:
            conn.execute(m.target.drop_index(m.id))
        # CREATE INDEX CONCURRENTLY cannot run in a transaction, so no SET LOCAL: set the session's memory
        # for the build and put it back after. An hnsw graph that outgrows it is built far more slowly.
        conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", [f"{s.index_build_memory_mb}MB"])
        try:
            conn.execute(create)
        finally:
            if not conn.broken:
                conn.execute("RESET maintenance_work_mem")

    log.info("index.build", method=method, lists=lists, m=s.hnsw_m, ef_construction=s.hnsw_ef_construction)
    db.run(go, what="create_index")
    name = m.target.index_name(m.id)
    db.run(
        lambda c: c.execute("UPDATE swarm.migrations SET index_name = %s WHERE id = %s", [name, m.id]),
        what="ix",
    )
    return name


def index_progress(conn: psycopg.Connection) -> dict[str, Any] | None:
    r = conn.execute(
        "SELECT phase, blocks_done, blocks_total, tuples_done, tuples_total FROM pg_stat_progress_create_index "
        "WHERE command = 'CREATE INDEX CONCURRENTLY' LIMIT 1"
    ).fetchone()
    if r is None:
        return None
    return dict(zip(("phase", "blocks_done", "blocks_total", "tuples_done", "tuples_total"), r, strict=True))


def finish_counts(conn: psycopg.Connection, m: Migration) -> tuple[int, int, int]:
    """(rows_total, rows_done, rows_failed) as they stand in the table now."""
    total = conn.execute(m.target.count_rows()).fetchone()[0]
    done = conn.execute(m.target.count_with_vector()).fetchone()[0]
    failed = conn.execute(
        sql.SQL(
            "SELECT count(*) FROM swarm.dead_letters d WHERE d.migration_id = %s AND EXISTS ("
            "SELECT 1 FROM {t} t WHERE t.{id}::text = d.row_id AND t.{new} IS NULL)"
        ).format(t=m.target.t, id=m.target.id, new=m.target.new),
        [m.id],
    ).fetchone()[0]
    return int(total), int(done), int(failed)


def drop_sync(db: Database, m: Migration, cfg: Config) -> None:
    run_ddl(db, m.target.drop_sync(m.id), lock_timeout_ms=cfg.swarm.lock_timeout_ms, retries=cfg.swarm.ddl_retries)


# --------------------------------------------------------------------------------------------------------------
# Status
# --------------------------------------------------------------------------------------------------------------
def status(conn: psycopg.Connection, m: Migration) -> dict[str, Any]:
    """The status a user reads (``status --json``)."""
    shards = conn.execute(
        "SELECT shard_id, state, rows_done, rows_failed, rows_planned, worker, attempt, error "
        "FROM swarm.shards WHERE migration_id = %s ORDER BY shard_id",
        [m.id],
    ).fetchall()
    final = conn.execute(
        "SELECT rows_done, rows_failed, rows_total, extract(epoch FROM coalesce(finished_at, now()) - started_at), "
        "rollout_percent FROM swarm.migrations WHERE id = %s",
        [m.id],
    ).fetchone()
    rows_done_final, rows_failed_final, rows_total, elapsed, rollout = final
    pending = conn.execute("SELECT count(*) FROM swarm.changes WHERE migration_id = %s", [m.id]).fetchone()[0]
    truncated = conn.execute(
        "SELECT coalesce(sum(truncated), 0) FROM swarm.batches WHERE migration_id = %s", [m.id]
    ).fetchone()[0]
    rate = conn.execute(
        "SELECT coalesce(sum(rows), 0), extract(epoch FROM max(at) - min(at)) FROM swarm.batches "
        "WHERE migration_id = %s AND at > now() - interval '30 seconds'",
        [m.id],
    ).fetchone()
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
        "rows_per_second": round(rps, 1) if rps else None,
        "eta_seconds": round(remaining / rps, 1) if rps and m.state == "running" else None,
        "elapsed_seconds": round(float(elapsed), 1) if elapsed is not None else None,
        "rollout_percent": float(rollout),
        "index": m.index_name,
        "index_progress": index_progress(conn) if m.phase == "index" else None,
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


# --------------------------------------------------------------------------------------------------------------
# Roll back
# --------------------------------------------------------------------------------------------------------------
def stop_shards(conn: psycopg.Connection, mid: int) -> int:
    """Fence every running shard: its migrator's next checkpoint fails and it stops writing."""
    return conn.execute(
        "UPDATE swarm.shards SET state = 'cancelled', updated_at = now() "
        "WHERE migration_id = %s AND state IN ('running', 'pending')",
        [mid],
    ).rowcount


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
