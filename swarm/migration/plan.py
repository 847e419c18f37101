"""Plan (expand, pgroll-style): check the table, add the new column and the sync trigger under ``lock_timeout``,
record the migration and split the table into shards."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from swarm.core.errors import ConfigError, DimensionMismatch, MigrationError
from swarm.core.log import get_logger
from swarm.migration.record import TERMINAL, Migration, event, load, set_state
from swarm.migration.shards import make_shards
from swarm.store.db import Database, ServerInfo, one
from swarm.store.sql import Target, regclass_text, split_table

if TYPE_CHECKING:
    from swarm.core.config import Config

log = get_logger()

REHEARSAL_COLUMN = "swarm_rehearsal"


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
    row = conn.execute("SELECT to_regclass(%s)::oid", [regclass_text(schema, table)]).fetchone()
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
    est = one(
        conn.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s", [oid]).fetchone(), "the table in pg_class"
    )[0]
    return TableInfo(
        key_type=cols[dbc.id_column],
        content_type=content_type,
        legacy_type=m.group(1) if m else cols[dbc.legacy_column],
        legacy_dim=int(m.group(2)) if m else None,
        new_type=new.group(1) if new else (cols.get(dbc.new_column)),
        new_dim=int(new.group(2)) if new else None,
        rows_estimate=max(0, int(est)),
    )


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
                    conn.execute(sql.Composed([s]))  # the same text; execute's type takes no bare Composable
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
    """``rows:sum``, an order-independent digest of (key, legacy vector) that streams at any table size."""
    n, digest = one(conn.execute(target.legacy_checksum(legacy_type(conn, target))).fetchone(), "the legacy checksum")
    return f"{n}:{digest}"


def legacy_type(conn: psycopg.Connection, target: Target) -> str:
    """``vector`` or ``halfvec``: the legacy column's type, read from the catalog."""
    schema, table = split_table(target.table)
    row = conn.execute(
        "SELECT t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        "WHERE a.attrelid = to_regclass(%s) AND a.attname = %s AND NOT a.attisdropped",
        [regclass_text(schema, table), target.legacy_column],
    ).fetchone()
    return str(row[0]) if row else "vector"


def table_oid(conn: psycopg.Connection, table: str) -> int | None:
    row = conn.execute("SELECT to_regclass(%s)::oid::bigint", [regclass_text(*split_table(table))]).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def swarm_triggers(conn: psycopg.Connection, target: Target) -> dict[str, tuple[str, int]]:
    """The swarm triggers on the table: {trigger name: (kind ``sync``/``guard``, the migration id in its name)}."""
    found = {}
    for (name,) in conn.execute(Target.swarm_triggers(), [regclass_text(*split_table(target.table))]).fetchall():
        kind, _, mid = name.removeprefix("swarm_").partition("_")
        if mid.isdigit():
            found[name] = (kind, int(mid))
    return found


def leftovers(conn: psycopg.Connection, target: Target) -> tuple[list[int], list[int]]:
    """What earlier migrations left on the table: (ids of sync triggers whose migration is over or unknown,
    ids of guards that keep *this* new column). A sync trigger of a migration still under way refuses the plan."""
    stale_sync, guards = [], []
    for _name, (kind, mid) in swarm_triggers(conn, target).items():
        row = conn.execute("SELECT state, new_column FROM swarm.migrations WHERE id = %s", [mid]).fetchone()
        if kind == "sync":
            if row is not None and row[0] not in TERMINAL:
                raise MigrationError(
                    f"migration {mid} of {target.table} is still {row[0]}; resume it with `orchestrate` or end it "
                    "with `rollback` before planning another"
                )
            stale_sync.append(mid)
        elif row is None or row[1] == target.new_column:
            guards.append(mid)
    return stale_sync, guards


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
    """Expand: add the new column and the sync trigger (removing what ended migrations left behind), record the
    migration, take the legacy baseline, split the table into shards."""
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
    stale_sync, guards = leftovers(conn, target)
    if not rehearse and table.new_type is not None and not guards:
        held = one(
            conn.execute(
                sql.SQL("SELECT EXISTS (SELECT 1 FROM {t} WHERE {new} IS NOT NULL)").format(t=target.t, new=target.new)
            ).fetchone(),
            "whether the new column holds vectors",
        )[0]
        if held:
            raise MigrationError(
                f"{target.table}.{target.new_column} already holds vectors that no swarm guard kept current (they may "
                "not match their rows' content); drop that column or set database.new_column to a new name"
            )
    checksum = legacy_checksum(conn, target)
    oid = table_oid(conn, target.table)
    with conn.transaction():
        mid = one(
            conn.execute(
                "INSERT INTO swarm.migrations (name, state, phase, table_name, id_column, key_type, content_column, "
                "legacy_column, new_column, column_type, dimension, model_id, model_sha256, config, legacy_checksum, "
                "rehearsal, table_oid) VALUES (%s, 'planned', 'plan', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
                "%s, %s) RETURNING id",
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
                    oid,
                ],
            ).fetchone(),
            "the new migration's id",
        )[0]
    ddl: list[sql.Composable] = []
    for old in stale_sync:
        ddl += target.drop_sync(old)
    if rehearse:
        ddl.append(target.drop_column())
    ddl += [
        target.add_column(column_type, dimension),
        target.create_sync_function(mid),
        target.create_sync_trigger(mid),
    ]
    for old in guards:  # replaced by the sync trigger in the same transaction: the column is never unguarded
        ddl += target.drop_guard(old)
    try:
        attempts = run_ddl(db, ddl, lock_timeout_ms=cfg.swarm.lock_timeout_ms, retries=cfg.swarm.ddl_retries)
    except Exception as e:
        # Nothing was changed (the DDL ran in one transaction): record why, so a rerun plans afresh instead of
        # resuming a migration whose column does not exist.
        reason = f"{type(e).__name__}: {e}"
        db.run(lambda c: set_state(c, mid, "failed", phase="plan", reason=reason), what="plan_failed")
        raise
    if stale_sync or guards:
        log.info("plan.leftovers_removed", migration=mid, sync_triggers=stale_sync, guards=guards)
    if not rehearse:
        baseline_s = time.monotonic()
        for stmt in target.create_baseline(mid, legacy_type(conn, target)):

            def baseline(c: psycopg.Connection, s: sql.Composed = stmt) -> None:
                c.execute(s)

            db.run(baseline, what="baseline")
        baseline_s = time.monotonic() - baseline_s
    rows = make_shards(db, mid, target, cfg.swarm.shard_rows, cfg.swarm.migrators, cfg.embedding.batch_size)
    sizes = table_sizes(conn, target)
    with conn.transaction():
        conn.execute(
            "UPDATE swarm.migrations SET rows_total = %s, sizes = jsonb_build_object('plan', %s::jsonb), "
            "updated_at = now() WHERE id = %s",
            [rows, json.dumps(sizes), mid],
        )
        event(
            conn,
            mid,
            "planned",
            rows=rows,
            column_type=column_type,
            dimension=dimension,
            ddl_attempts=attempts,
            removed_sync_triggers=stale_sync or None,
            adopted_guards=guards or None,
            baseline_seconds=None if rehearse else round(baseline_s, 2),
        )
    log.info("migration.planned", migration=mid, rows=rows, column_type=column_type, dimension=dimension)
    return load(conn, mid)


def table_sizes(conn: psycopg.Connection, target: Target) -> dict[str, int]:
    """The table's heap (with TOAST), its indexes, and all of it, in bytes."""
    row = one(
        conn.execute(
            "SELECT pg_table_size(c), pg_indexes_size(c), pg_total_relation_size(c) FROM to_regclass(%s) AS c",
            [regclass_text(*split_table(target.table))],
        ).fetchone(),
        "the table's sizes",
    )
    return {"table_bytes": int(row[0] or 0), "index_bytes": int(row[1] or 0), "total_bytes": int(row[2] or 0)}


def verify_resumable(conn: psycopg.Connection, m: Migration) -> str | None:
    """Why migration ``m`` can no longer be resumed on its table, or None. The table must be the one it was
    planned on (a table dropped and recreated under the same name is another one), and it must still hold the
    new column and, while the migration follows the table, its sync trigger."""
    oid = table_oid(conn, m.target.table)
    if oid is None:
        return f"the table {m.target.table} no longer exists"
    if m.table_oid is not None and oid != m.table_oid:
        return f"the table {m.target.table} was replaced since the plan (oid {m.table_oid} -> {oid})"
    has_column = conn.execute(
        "SELECT 1 FROM pg_attribute WHERE attrelid = %s AND attname = %s AND NOT attisdropped",
        [oid, m.target.new_column],
    ).fetchone()
    if m.state != "planned" and not has_column:
        return f"{m.target.table}.{m.target.new_column} no longer exists"
    if m.state not in TERMINAL or m.state == "completed":
        triggers = swarm_triggers(conn, m.target)
        if m.state != "planned" and f"swarm_sync_{m.id}" not in triggers:
            return f"the sync trigger swarm_sync_{m.id} is gone from {m.target.table}"
    return None
