"""The cutover (``decommission --rename``): the new column takes the legacy column's name, so the application's
own SQL (``ORDER BY embedding <=> $1``) searches the new vectors without a change to its text.

In one transaction under ``lock_timeout`` with retries (:func:`swarm.migration.run_ddl`):

1. ``ALTER TABLE ... RENAME COLUMN <new> TO <legacy>``;
2. ``ALTER INDEX ... RENAME`` of the ANN index swarm built to ``<table>_<legacy>_idx`` (the name PostgreSQL
   gives an index on that column by default, which the legacy column's index usually had);
3. the migration's record follows (``new_column``, ``index_name``) and an event ``cutover`` is written, so
   routers, ``swarm.arm`` and ``status`` name the column by its new name from the same commit on.

It runs once the legacy column is gone: :func:`cutover` refuses while it exists, with one line. To leave the
application no moment without the column, :func:`statements_in` gives the same DDL (checked) to append to the
decommission's own transaction, right after the ``DROP COLUMN`` of the legacy column: then a query sees either
the legacy vectors or the new ones under that name, never an error.

What the application must still change (README, "Integrating your application"): its query vector comes from
the new model (with its query prefix) and has the new dimension; with the same dimension the old statement
runs unchanged, with another, ``$1::vector(384)`` casts in its SQL must say the new one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from psycopg import sql

from swarm import migration as mig
from swarm.core.errors import MigrationError, UsageError
from swarm.core.log import get_logger
from swarm.store.db import Database
from swarm.store.sql import regclass_text, split_table

if TYPE_CHECKING:
    import psycopg

    from swarm.core.config import Config

log = get_logger()


def index_name_for(m: mig.Migration) -> str:
    """The name the new column's index takes: ``<table>_<legacy column>_idx`` (at most 63 bytes)."""
    _, table = split_table(m.target.table)
    return f"{table}_{m.target.legacy_column}_idx"[:63]


def _qualified(schema: str | None, name: str) -> sql.Identifier:
    return sql.Identifier(schema, name) if schema else sql.Identifier(name)


def statements(m: mig.Migration, *, index: str | None = None, new_index: str | None = None) -> list[sql.Composable]:
    """The cutover's DDL and record, for one transaction: rename the column, its index (``index``, default
    ``m.index_name``; none when the migration built none) to ``new_index`` (default :func:`index_name_for`),
    update the migration's record and write the ``cutover`` event. Put them after the legacy column's
    ``DROP COLUMN`` in the same :func:`~swarm.migration.run_ddl` call, or run them alone once it is gone."""
    t = m.target
    schema, _ = split_table(t.table)
    index = m.index_name if index is None else index
    new_index = new_index or index_name_for(m)
    out: list[sql.Composable] = [
        sql.SQL("ALTER TABLE {t} RENAME COLUMN {new} TO {legacy}").format(t=t.t, new=t.new, legacy=t.legacy)
    ]
    if index:
        out.append(
            sql.SQL("ALTER INDEX {ix} RENAME TO {to}").format(
                ix=_qualified(schema, index), to=sql.Identifier(new_index)
            )
        )
    detail = {
        "from_column": t.new_column,
        "column": t.legacy_column,
        "from_index": index,
        "index": new_index if index else None,
        "column_type": f"{m.column_type}({m.dimension})",
    }
    out.append(
        sql.SQL(
            "UPDATE swarm.migrations SET new_column = {col}, index_name = {ix}, updated_at = now() WHERE id = {mid}"
        ).format(
            col=sql.Literal(t.legacy_column),
            ix=sql.Literal(new_index if index else None),
            mid=sql.Literal(int(m.id)),
        )
    )
    out.append(
        sql.SQL("INSERT INTO swarm.events (migration_id, kind, detail) VALUES ({mid}, 'cutover', {d}::jsonb)").format(
            mid=sql.Literal(int(m.id)), d=sql.Literal(json.dumps(detail))
        )
    )
    return out


def _columns(conn: psycopg.Connection, m: mig.Migration) -> dict[str, str]:
    schema, table = split_table(m.target.table)
    return dict(
        conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
            [regclass_text(schema, table)],
        ).fetchall()
    )


def _relation_exists(conn: psycopg.Connection, schema: str | None, name: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [regclass_text(schema, name)]).fetchone()
    return bool(row and row[0])


def refusals(
    conn: psycopg.Connection, m: mig.Migration, *, in_decommission: bool = False, dropping: Sequence[str] = ()
) -> list[str]:
    """Why the cutover cannot run now (empty: it can). ``in_decommission``: it will run in the decommission's
    transaction, after the DROP of the legacy column and of the indexes named in ``dropping``."""
    t = m.target
    if m.rehearsal:
        return [f"migration {m.id} is a rehearsal; its scratch column is not the application's"]
    if t.new_column == t.legacy_column:
        return [f"already cut over: {t.table}.{t.legacy_column} holds the new vectors (migration {m.id})"]
    cols = _columns(conn, m)
    why = []
    if in_decommission:
        pass
    elif t.legacy_column in cols:
        why.append(
            f"the legacy column {t.table}.{t.legacy_column} still exists; the cutover runs after `decommission` "
            "drops it (`decommission --rename` does both)"
        )
    elif m.phase not in ("decommissioned", "unfollowed"):
        why.append(f"migration {m.id} is {m.state} ({m.phase}); decommission it first")
    if t.new_column not in cols:
        why.append(f"the new column {t.table}.{t.new_column} does not exist")
    schema, _ = split_table(t.table)
    # (While the legacy column exists its own index usually holds that name; decommission drops it.)
    name = index_name_for(m)
    if not why and m.index_name and name not in dropping and _relation_exists(conn, schema, name):
        why.append(f"an index or table named {name} already exists; drop or rename it first")
    return why


def statements_in(conn: psycopg.Connection, m: mig.Migration, *, dropping: Sequence[str] = ()) -> list[sql.Composable]:
    """The cutover's statements for the decommission's own DDL transaction (``decommission --rename``), to run
    right after the DROP of the legacy column and of its indexes (``dropping``); checked first, so a cutover that
    cannot run refuses the whole decommission with one line before anything is dropped."""
    why = refusals(conn, m, in_decommission=True, dropping=dropping)
    if why:
        raise MigrationError("decommission --rename refused: " + "; ".join(why))
    schema, _ = split_table(m.target.table)
    index = m.index_name if m.index_name and _relation_exists(conn, schema, m.index_name) else ""
    return statements(m, index=index)


def cutover(cfg: Config, dsn: str) -> dict[str, Any]:
    """Rename the decommissioned migration's new column (and its index) to the legacy column's name, in one
    transaction under ``swarm.lock_timeout_ms`` with ``swarm.ddl_retries`` retries. Returns what was done."""
    db = Database(dsn, application_name="swarm:cutover")
    try:
        m = db.run(lambda c: mig.latest(c, cfg, rehearse=False), what="latest")
        if m is None:
            raise UsageError(f"no migration of {cfg.database.table}; nothing to cut over")
        why = db.run(lambda c: refusals(c, m), what="refusals")
        if why:
            raise MigrationError("cutover refused: " + "; ".join(why))
        schema, _ = split_table(m.target.table)
        index = m.index_name if m.index_name and db.run(
            lambda c: _relation_exists(c, schema, m.index_name or ""), what="index"
        ) else None  # fmt: skip
        ddl = statements(m, index=index or "")
        if m.phase == "decommissioned":  # still followed: the sync trigger's body names the column it nulls
            from dataclasses import replace

            ddl.append(replace(m.target, new_column=m.target.legacy_column).create_sync_function(m.id))
        attempts = mig.run_ddl(
            db, ddl, lock_timeout_ms=cfg.swarm.lock_timeout_ms,
            retries=cfg.swarm.ddl_retries,
        )  # fmt: skip
        result = {
            "migration": m.id,
            "table": m.target.table,
            "from_column": m.target.new_column,
            "column": m.target.legacy_column,
            "from_index": index,
            "index": index_name_for(m) if index else None,
            "column_type": f"{m.column_type}({m.dimension})",
            "ddl_attempts": attempts,
        }
        log.info("migration.cutover", **result)
        return result
    finally:
        db.close()
