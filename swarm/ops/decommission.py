"""Phase 5: retire the legacy column once the new one serves every query and has passed its gates.

``decommission`` refuses unless the newest migration of the table is completed, at 100% rollout, with a
passing (complete, not partial) validation on record, no failed rollout step, and the ``USE_NOMIC_EMBEDDINGS``
flag on.
Then it

1. embeds rows whose content changed since the migration finished (queued by the sync trigger), with the new
   model in this process, so no row is left without a new vector;
2. archives the legacy embeddings to ``swarm.archive_<mid>_<column>`` (same key and column names) in one
   snapshot, and, with ``archive=FILE``, to a JSONL file (``.gz`` compresses);
3. in one DDL transaction under ``lock_timeout`` (:func:`swarm.migration.run_ddl`): drops the sync trigger and
   its function, brings the archive up to date with legacy writes made since the snapshot, drops the legacy
   column's indexes and the column;
4. records it (phase ``decommissioned``, event ``decommission``) and writes the final audit report.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psycopg import sql

from swarm import migration as mig
from swarm.core.errors import MigrationError, UsageError
from swarm.core.log import get_logger
from swarm.store.db import Database
from swarm.store.sql import Target, regclass_text

if TYPE_CHECKING:
    import psycopg

    from swarm.core.config import Config

log = get_logger()


def refusals(conn: psycopg.Connection, cfg: Config, m: mig.Migration) -> list[str]:
    """Why the legacy column may not be dropped yet (empty: it may)."""
    why: list[str] = []
    if m.rehearsal:
        return [f"migration {m.id} is a rehearsal"]
    if m.phase == "decommissioned":
        return [f"migration {m.id} was already decommissioned; the legacy column is gone"]
    if m.state != "completed":
        why.append(f"migration {m.id} is {m.state} ({m.phase}); decommission needs a completed migration")
    if m.rollout_percent < 100:
        why.append(
            f"the new column serves {m.rollout_percent:g}% of queries; roll out to 100% first "
            "(`python -m swarm rollout --auto` or `--percent 100`)"
        )
    if not cfg.rollout.use_new:
        why.append("USE_NOMIC_EMBEDDINGS=false sends every query to the legacy column; turn it back on first")
    row = conn.execute(
        "SELECT detail FROM swarm.events WHERE migration_id = %s AND kind = 'validation' ORDER BY id DESC LIMIT 1",
        [m.id],
    ).fetchone()
    if row is None:
        why.append("no validation on record; run `python -m swarm validate`")
    else:
        v = row[0]
        if v.get("verdict") == "INCONCLUSIVE":  # its reasons are in failures too, for older readers
            why.append(
                "the last validation was INCONCLUSIVE: "
                + "; ".join(v.get("inconclusive") or v["failures"])
                + "; run `python -m swarm validate` again (more queries: validation.sample_queries)"
            )
        elif v.get("failures"):
            why.append("the last validation failed: " + "; ".join(v["failures"]))
        elif v.get("partial"):
            why.append("the last validation ran on part of the table; run `python -m swarm validate` again")
    step = conn.execute(
        "SELECT detail FROM swarm.events WHERE migration_id = %s AND kind = 'rollout_step' ORDER BY id DESC LIMIT 1",
        [m.id],
    ).fetchone()
    if step is not None and step[0].get("failures"):
        why.append("the last rollout step failed: " + "; ".join(step[0]["failures"]))
    return why


def archive_target(m: mig.Migration) -> Target:
    """The archive table, shaped so that ``Target.legacy_checksum`` digests it exactly as the source."""
    t = m.target
    name = f"archive_{m.id}_{t.legacy_column}"[:63]
    return Target(f"swarm.{name}", t.id_column, t.content_column, t.legacy_column, t.new_column, t.key_type)


def legacy_indexes(conn: psycopg.Connection, m: mig.Migration) -> list[str]:
    """Names of the indexes that use the legacy column."""
    t = m.target
    schema, table = t.table.split(".", 1) if "." in t.table else (None, t.table)
    regclass = regclass_text(schema, table)
    return [
        r[0]
        for r in conn.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indrelid = to_regclass(%s) AND a.attname = %s ORDER BY 1",
            [regclass, t.legacy_column],
        ).fetchall()
    ]


def _drain(cfg: Config, db: Database, m: mig.Migration) -> int:
    """Embed, in this process, the rows that lost their new vector since the migration ended (the sync trigger
    queued them) and any row with none; returns how many got one."""
    before = db.run(lambda c: c.execute(m.target.count_missing(), [m.id]).fetchone()[0], what="missing")
    db.run(lambda c: mig.enqueue_missing(c, m, limit=1_000_000_000), what="enqueue_missing")
    queued = db.run(
        lambda c: c.execute("SELECT count(*) FROM swarm.changes WHERE migration_id = %s", [m.id]).fetchone()[0],
        what="queued",
    )
    if not queued:
        return 0
    from model.factory import embedder_for

    with embedder_for(cfg, "new") as embedder:

        def embed(texts: list[str | None]) -> tuple[Any, list[str | None], int]:
            long: list[int] = []
            vectors, errors = embedder.embed_many(texts, truncated=long)
            return vectors, errors, len(long)

        while mig.drain_changes(db, m, embed, worker="decommission", limit=cfg.embedding.batch_size)[0]:
            pass
    after = db.run(lambda c: c.execute(m.target.count_missing(), [m.id]).fetchone()[0], what="missing")
    return int(before) - int(after)


def _write_archive_file(db: Database, at: Target, path: Path) -> dict[str, Any]:
    """Stream the archive table to JSONL (``{"id": "<key>", "embedding": [...]}`` per row, in key order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = 0
    conn = db.conn
    with (
        conn.transaction(),
        conn.cursor(name="swarm_archive") as cur,
        opener(tmp, "wt", encoding="utf-8") as f,
    ):
        cur.itersize = 2000
        cur.execute(
            sql.SQL("SELECT {id}::text, {v}::text FROM {t} ORDER BY {id}").format(id=at.id, v=at.legacy, t=at.t)
        )
        for key, vec in cur:
            f.write(json.dumps({"id": key, "embedding": json.loads(vec) if vec is not None else None}) + "\n")
            rows += 1
    os.replace(tmp, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"archive_file": str(path), "archive_file_rows": rows, "archive_file_sha256": digest}


def decommission(cfg: Config, dsn: str, *, archive: str | None = None, report: bool = True) -> dict[str, Any]:
    """Archive the legacy embeddings and drop the legacy column; see the module docstring."""
    db = Database(dsn, application_name="swarm:decommission")
    m = db.run(lambda c: mig.latest(c, cfg, rehearse=False), what="latest")
    if m is None:
        raise UsageError(f"no migration of {cfg.database.table}; nothing to decommission")
    why = db.run(lambda c: refusals(c, cfg, m), what="refusals")
    if why:
        raise MigrationError("decommission refused: " + "; ".join(why))
    t, at = m.target, archive_target(m)
    result: dict[str, Any] = {
        "migration": m.id,
        "table": t.table,
        "dropped_column": t.legacy_column,
        "archive_table": at.table,
    }
    result["re_embedded_rows"] = _drain(cfg, db, m)

    def snapshot(conn: psycopg.Connection) -> str:
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {a}").format(a=at.t))
            conn.execute(
                sql.SQL("CREATE TABLE {a} AS SELECT {id}, {v} FROM {t}").format(a=at.t, id=t.id, v=t.legacy, t=t.t)
            )
            conn.execute(sql.SQL("ALTER TABLE {a} ADD PRIMARY KEY ({id})").format(a=at.t, id=t.id))
            source = mig.legacy_checksum(conn, t)
            copied = mig.legacy_checksum(conn, at)
            if source != copied:
                raise MigrationError(f"archive checksum {copied} differs from the column's {source}; nothing dropped")
            return source

    result["legacy_checksum"] = db.run(snapshot, what="archive")
    indexes = db.run(lambda c: legacy_indexes(c, m), what="indexes")
    schema = t.table.split(".", 1)[0] if "." in t.table else None
    catch_up = sql.SQL(
        "INSERT INTO {a} ({id}, {v}) SELECT {id}, {v} FROM {t} "
        "ON CONFLICT ({id}) DO UPDATE SET {v} = EXCLUDED.{v} WHERE {a}.{v} IS DISTINCT FROM EXCLUDED.{v}"
    ).format(a=at.t, id=t.id, v=t.legacy, t=t.t)
    ddl: list[sql.Composable] = [*t.drop_sync(m.id), catch_up]
    ddl += [
        sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(schema, ix) if schema else sql.Identifier(ix))
        for ix in indexes
    ]
    ddl.append(t.drop_column(t.legacy_column))
    result["ddl_attempts"] = mig.run_ddl(
        db, ddl, lock_timeout_ms=cfg.swarm.lock_timeout_ms, retries=cfg.swarm.ddl_retries
    )
    result["dropped_indexes"] = indexes
    # Rows changed after the drain were queued by the trigger until it went: embed them too.
    result["re_embedded_rows"] += _drain(cfg, db, m)
    n, _ = db.run(lambda c: c.execute(sql.SQL("SELECT count(*), 1 FROM {a}").format(a=at.t)).fetchone(), what="n")
    result["archived_rows"] = int(n)
    result["archive_checksum"] = db.run(lambda c: mig.legacy_checksum(c, at), what="archive_checksum")
    if archive:
        result.update(_write_archive_file(db, at, cfg.path(archive)))
    result["rows_without_new_vector"] = int(
        db.run(lambda c: c.execute(t.count_missing(), [m.id]).fetchone()[0], what="missing")
    )

    def record(conn: psycopg.Connection) -> None:
        with conn.transaction():
            conn.execute(
                "UPDATE swarm.migrations SET phase = 'decommissioned', updated_at = now() WHERE id = %s",
                [m.id],
            )
            conn.execute("DELETE FROM swarm.changes WHERE migration_id = %s", [m.id])
            mig.event(conn, m.id, "decommission", **result)

    db.run(record, what="record")
    log.info("migration.decommissioned", migration=m.id, column=t.legacy_column, archived=result["archived_rows"])
    if report:
        from swarm.ops import report as rpt

        result["report"] = rpt.write(cfg, db, m.id)
    db.close()
    return result
