"""Phase 5: retire the legacy column once the new one serves every query and has passed its gates, while the
application goes on writing.

``decommission`` refuses unless the newest migration of the table is completed, at 100% rollout, with a
passing (complete, not partial) validation on record, no failed rollout step, the ``USE_NOMIC_EMBEDDINGS`` flag
on, and nothing but indexes depending on the legacy column (a view, a function with an SQL body, a policy, a
default or generated column, a constraint, a trigger: ``pg_depend`` names them). Then it

1. embeds, in this process, the rows that lost their new vector since the migration finished;
2. archives the legacy embeddings to ``swarm.archive_<mid>_<column>`` **in batches, outside any DDL**: a capture
   trigger (installed under ``lock_timeout``) keeps the archive equal to the column for every write the
   application makes meanwhile, and the batches copy the rest by keyset; both tables are then compared in one
   snapshot (and written to ``--archive FILE`` if asked);
3. drops, in one short DDL transaction under ``lock_timeout`` (retried), the capture trigger, the legacy
   column's indexes and the column; with ``rename`` the new column takes the legacy column's name (and its
   index a matching one), so the application's own ``ORDER BY embedding <=> $1`` searches the new vectors;
4. keeps following the table: the sync trigger stays, and the coordinator (while the swarm runs; ``orchestrate``
   catches up otherwise) embeds the rows the application inserts or changes. ``stop_following`` removes the
   sync trigger and the queue instead: from then on the application writes the new column itself;
5. records it (phase ``decommissioned``, or ``unfollowed``; event ``decommission``) and writes the report.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psycopg import sql

from swarm import migration as mig
from swarm.core.errors import MigrationError, UsageError
from swarm.core.log import get_logger
from swarm.ops import cutover
from swarm.store.db import Database, one
from swarm.store.sql import Target, regclass_text, split_table

if TYPE_CHECKING:
    import psycopg

    from swarm.core.config import Config

log = get_logger()


def refusals(conn: psycopg.Connection, cfg: Config, m: mig.Migration) -> list[str]:
    """Why the legacy column may not be dropped yet (empty: it may)."""
    why: list[str] = []
    if m.rehearsal:
        return [f"migration {m.id} is a rehearsal"]
    if m.phase in ("decommissioned", "unfollowed"):
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
    before = one(
        db.run(lambda c: c.execute(m.target.count_missing(), [m.id]).fetchone(), what="missing"),
        "the count of rows without a new vector",
    )[0]
    db.run(lambda c: mig.enqueue_missing(c, m, limit=1_000_000_000), what="enqueue_missing")
    queued = one(
        db.run(
            lambda c: c.execute("SELECT count(*) FROM swarm.changes WHERE migration_id = %s", [m.id]).fetchone(),
            what="queued",
        ),
        "the count of queued changes",
    )[0]
    if not queued:
        return 0
    from model.factory import embedder_for

    with embedder_for(cfg, "new") as embedder:

        def embed(texts: list[str | None]) -> tuple[Any, list[str | None], int]:
            long: list[int] = []
            vectors, errors = embedder.embed_many(texts, truncated=long)
            return vectors, errors, len(long)

        # What was queued when the decommission began; the application keeps queueing, and the follow mode
        # embeds that afterwards (chasing it here would never end under steady writes).
        done = 0
        while done < queued:
            n = mig.drain_changes(db, m, embed, worker="decommission", limit=cfg.embedding.batch_size)[0]
            if not n:
                break
            done += n
    after = one(
        db.run(lambda c: c.execute(m.target.count_missing(), [m.id]).fetchone(), what="missing"),
        "the count of rows without a new vector",
    )[0]
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


def dependents(conn: psycopg.Connection, m: mig.Migration) -> list[str]:
    """What besides its indexes depends on the legacy column (it cannot be dropped without them)."""
    t = m.target
    rows = conn.execute(t.dependents(), [regclass_text(*split_table(t.table)), t.legacy_column]).fetchall()
    return [f"{what} {name}" for what, name in rows]


def _column_type(db: Database, m: mig.Migration) -> str:
    t = m.target
    row = db.run(
        lambda c: c.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = to_regclass(%s) "
            "AND attname = %s AND NOT attisdropped",
            [regclass_text(*split_table(t.table)), t.legacy_column],
        ).fetchone(),
        what="legacy_type",
    )
    return str(one(row, f"the type of the legacy column {t.table}.{t.legacy_column}")[0])


def _archive(db: Database, cfg: Config, m: mig.Migration, at: Target, batch_rows: int) -> dict[str, Any]:
    """The capture trigger, then the batches, then the comparison in one snapshot. Returns the figures."""
    t = m.target
    full_type = _column_type(db, m)
    db.run(lambda c: c.execute(sql.SQL("DROP TABLE IF EXISTS {a}").format(a=at.t)), what="archive_drop")
    db.run(lambda c: c.execute(t.create_archive(at, full_type)), what="archive_create")
    mig.run_ddl(
        db, t.archive_capture(m.id, at), lock_timeout_ms=cfg.swarm.lock_timeout_ms, retries=cfg.swarm.ddl_retries
    )
    after: str | None = None
    copied = batches = 0
    started = time.monotonic()
    while True:
        q, params = t.archive_batch(at, after, batch_rows)

        def copy_batch(c: psycopg.Connection, q: sql.Composed = q, p: list[object] = params) -> tuple[Any, ...] | None:
            return c.execute(q, p).fetchone()

        last, n = one(db.run(copy_batch, what="archive_batch"), "the archive batch's last key and count")
        if not n:
            break
        after, copied, batches = last, copied + int(n), batches + 1
    ltype = full_type.split("(", 1)[0]

    def compare(conn: psycopg.Connection) -> tuple[str, str]:
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            source = one(conn.execute(t.legacy_checksum(ltype)).fetchone(), "the legacy column's checksum")
            kept = one(
                conn.execute(at.legacy_checksum(ltype, sql.SQL("NOT swarm_deleted"))).fetchone(),
                "the archive's checksum",
            )
            return f"{source[0]}:{source[1]}", f"{kept[0]}:{kept[1]}"

    source, archived = db.run(compare, what="archive_compare")
    if source != archived:
        raise MigrationError(
            f"the archive ({archived}) differs from the legacy column ({source}); nothing was dropped; run "
            "decommission again"
        )
    return {
        "legacy_checksum": source,
        "archive_checksum": archived,
        "archive_batches": batches,
        "archive_copy_seconds": round(time.monotonic() - started, 2),
    }


def _ddl(
    m: mig.Migration, indexes: list[str], *, cutover: list[sql.Composable], stop_following: bool
) -> list[sql.Composable]:
    """The one DDL transaction: drop the capture trigger, the legacy indexes and column; with ``cutover`` (the
    statements of :func:`swarm.ops.cutover.statements_in`) the new column takes the legacy name right after."""
    t = m.target
    schema = split_table(t.table)[0]

    def ident(name: str) -> sql.Identifier:
        return sql.Identifier(schema, name) if schema else sql.Identifier(name)

    ddl: list[sql.Composable] = [*t.drop_archive_capture(m.id)]
    ddl += [sql.SQL("DROP INDEX IF EXISTS {}").format(ident(ix)) for ix in indexes]
    ddl.append(t.drop_column(t.legacy_column))
    if stop_following:
        ddl += t.drop_sync(m.id)
    if cutover:
        ddl += cutover
        if not stop_following:
            # The sync trigger's body names the column: the same trigger, its body for the column's new name.
            ddl.append(replace(t, new_column=t.legacy_column).create_sync_function(m.id))
    return ddl


def decommission(
    cfg: Config,
    dsn: str,
    *,
    archive: str | None = None,
    rename: bool = False,
    stop_following: bool = False,
    report: bool = True,
    batch_rows: int = 5000,
) -> dict[str, Any]:
    """Archive the legacy embeddings and drop the legacy column while the application writes; see the module
    docstring."""
    db = Database(dsn, application_name="swarm:decommission", retry_s=cfg.swarm.db_retry_s)
    m = db.run(lambda c: mig.latest(c, cfg, rehearse=False), what="latest")
    if m is None:
        raise UsageError(f"no migration of {cfg.database.table}; nothing to decommission")
    why = db.run(lambda c: refusals(c, cfg, m), what="refusals")
    held = db.run(lambda c: dependents(c, m), what="dependents")
    if held:
        why.append(
            f"{m.target.table}.{m.target.legacy_column} is used by {', '.join(held)}; change or drop "
            f"{'it' if len(held) == 1 else 'them'} first (dropping the column would drop or break them)"
        )
    if why:
        raise MigrationError("decommission refused: " + "; ".join(why))
    t, at = m.target, archive_target(m)
    result: dict[str, Any] = {
        "migration": m.id,
        "table": t.table,
        "dropped_column": t.legacy_column,
        "archive_table": at.table,
        "renamed": rename,
        "following": not stop_following,
    }
    result["re_embedded_rows"] = _drain(cfg, db, m)
    result.update(db.run(lambda c: {"legacy": mig.verify_legacy(c, m)}, what="verify_legacy"))
    result.update(_archive(db, cfg, m, at, batch_rows))
    indexes = db.run(lambda c: legacy_indexes(c, m), what="indexes")
    renames = db.run(lambda c: cutover.statements_in(c, m, dropping=indexes), what="cutover") if rename else []
    ddl_t0 = time.monotonic()
    result["ddl_attempts"] = mig.run_ddl(
        db,
        _ddl(m, indexes, cutover=renames, stop_following=stop_following),
        lock_timeout_ms=cfg.swarm.lock_timeout_ms,
        retries=3 * cfg.swarm.ddl_retries + 10,
    )
    result["ddl_seconds"] = round(time.monotonic() - ddl_t0, 3)
    result["dropped_indexes"] = indexes
    db.run(lambda c: c.execute(sql.SQL("DELETE FROM {a} WHERE swarm_deleted").format(a=at.t)), what="tombstones")
    db.run(lambda c: c.execute(sql.SQL("ALTER TABLE {a} DROP COLUMN swarm_deleted").format(a=at.t)), what="archive")
    n = db.run(lambda c: c.execute(sql.SQL("SELECT count(*) FROM {a}").format(a=at.t)).fetchone(), what="n")
    result["archived_rows"] = int(one(n, "the count of archived rows")[0])
    if archive:
        result.update(_write_archive_file(db, at, cfg.path(archive)))
    now_t = replace(t, new_column=t.legacy_column) if rename else t
    result["rows_without_new_vector"] = int(
        one(
            db.run(lambda c: c.execute(now_t.count_missing(), [m.id]).fetchone(), what="missing"),
            "the count of rows without a new vector",
        )[0]
    )

    def record(conn: psycopg.Connection) -> None:
        with conn.transaction():
            conn.execute(
                "UPDATE swarm.migrations SET phase = %s, new_column = %s, index_name = %s, updated_at = now() "
                "WHERE id = %s",
                [
                    "unfollowed" if stop_following else "decommissioned",
                    now_t.new_column,
                    cutover.index_name_for(m) if rename and m.index_name else m.index_name,
                    m.id,
                ],
            )
            if stop_following:
                conn.execute("DELETE FROM swarm.changes WHERE migration_id = %s", [m.id])
            conn.execute(t.drop_baseline(m.id))
            mig.event(conn, m.id, "decommission", **result)

    db.run(record, what="record")
    log.info("migration.decommissioned", migration=m.id, column=t.legacy_column, archived=result["archived_rows"])
    if report:
        from swarm.ops import report as rpt

        result["report"] = rpt.write(cfg, db, m.id)
    db.close()
    return result
