"""The backfill's writes: one batch of vectors with its checkpoint, and the drain of queued changes.

Both the data-migrators (shards and the change queue) and ``decommission`` (the last changes before the legacy
column goes) write through here, so there is one way a vector reaches the table:

* :func:`apply_batch` runs inside the caller's transaction: the vectors (binary COPY + one ``UPDATE ... FROM``
  joined on md5 of the content they were computed from, see :mod:`swarm.store.vectors`), the dead letters of
  the rows that cannot be embedded, the shard checkpoint (fenced by the shard's attempt number) and the batch
  record. A crash at any point loses nothing and repeats nothing visible.
* :func:`drain_changes` claims queue entries with ``FOR UPDATE SKIP LOCKED`` (several migrators drain in
  parallel, pgai's vectorizer queue pattern), embeds the rows' current content and deletes the entries in the
  transaction that writes their vectors; a row changed again meanwhile has a newer entry.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import psycopg

from swarm.migration.record import Migration
from swarm.store.db import Database
from swarm.store.vectors import content_md5, write_vectors

#: ``embed(texts) -> (vectors, per-row errors, rows truncated to the model's context)``
EmbedFn = Callable[[list[str | None]], tuple[np.ndarray, list[str | None], int]]


class Fenced(Exception):
    """The shard was handed to another migrator (this one was presumed dead), or the migration stopped: stop,
    write nothing more."""


class AlreadyApplied(Exception):
    """This batch's checkpoint is already committed: a retried transaction whose first commit succeeded but
    whose acknowledgement was lost. The retry writes nothing and counts nothing (``result`` is what it would
    have written)."""

    def __init__(self, result: BatchResult) -> None:
        super().__init__("batch already applied")
        self.result = result


@dataclass
class Batch:
    """Rows read for embedding: keys as text, their content, the last key (the checkpoint after it) and the
    checkpoint it was read after (what the shard's ``last_key`` must still be when it is written)."""

    ids: list[str]
    texts: list[str | None]
    last_key: str
    prev_key: str | None = None


@dataclass(frozen=True)
class BatchResult:
    ok: int  # rows with a vector computed
    failed: int  # rows dead-lettered
    written: int  # vectors written (ok minus rows whose content changed meanwhile)
    embed_seconds: float
    seconds: float
    truncated: int


def apply_batch(
    conn: psycopg.Connection,
    m: Migration,
    b: Batch,
    vectors: np.ndarray,
    errors: list[str | None],
    *,
    worker: str,
    embed_seconds: float,
    truncated: int = 0,
    shard: tuple[int, int] | None = None,
) -> BatchResult:
    """Write a batch inside the caller's transaction; advance the checkpoint of ``shard`` = (id, attempt).

    Raises :class:`Fenced` when the shard is no longer this attempt's (the transaction must then roll back).
    """
    t0 = time.monotonic()
    ok = [i for i, e in enumerate(errors) if e is None]
    bad = [i for i, e in enumerate(errors) if e is not None]
    ids = [b.ids[i] for i in ok]
    md5s = [content_md5(b.texts[i]) for i in ok]  # type: ignore[arg-type]
    written = write_vectors(
        conn, m.target, ids, md5s, vectors[ok] if ok else vectors[:0], column_type=m.column_type, dim=m.dimension
    )
    if ids:
        conn.execute("DELETE FROM swarm.dead_letters WHERE migration_id = %s AND row_id = ANY(%s)", [m.id, ids])
    if bad:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO swarm.dead_letters (migration_id, row_id, reason, content_md5) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (migration_id, row_id) DO UPDATE "
                "SET reason = EXCLUDED.reason, content_md5 = EXCLUDED.content_md5, at = now()",
                [(m.id, b.ids[i], errors[i], content_md5(t) if (t := b.texts[i]) is not None else None) for i in bad],
            )
    shard_id = None
    seconds = embed_seconds + (time.monotonic() - t0)
    if shard is not None:
        shard_id, attempt = shard
        # Compare-and-set on the checkpoint: the batch commits only where the shard still stands where it was
        # read, under this attempt. A retry of a batch whose commit went through (its acknowledgement lost)
        # finds the checkpoint already past it and changes nothing, so rows_done never counts a batch twice.
        cur = conn.execute(
            "UPDATE swarm.shards SET last_key = %s, rows_done = rows_done + %s, "
            "rows_failed = rows_failed + %s, updated_at = now() "
            "WHERE migration_id = %s AND shard_id = %s AND attempt = %s AND state = 'running' "
            "AND last_key IS NOT DISTINCT FROM %s",
            [b.last_key, len(ok), len(bad), m.id, shard_id, attempt, b.prev_key],
        )
        if cur.rowcount != 1:
            now = conn.execute(
                "SELECT attempt, state, last_key FROM swarm.shards WHERE migration_id = %s AND shard_id = %s",
                [m.id, shard_id],
            ).fetchone()
            if now is not None and now[0] == attempt and now[1] in ("running", "done") and now[2] == b.last_key:
                raise AlreadyApplied(BatchResult(len(ok), len(bad), 0, embed_seconds, seconds, truncated))
            raise Fenced()
    conn.execute(
        "INSERT INTO swarm.batches (migration_id, shard_id, worker, rows, truncated, embed_seconds, seconds) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s)",
        [m.id, shard_id, worker, len(b.ids), truncated, embed_seconds, seconds],
    )
    return BatchResult(len(ok), len(bad), written, embed_seconds, seconds, truncated)


def drain_changes(
    db: Database, m: Migration, embed: EmbedFn, *, worker: str, limit: int
) -> tuple[int, BatchResult | None]:
    """One round of the change queue: claim up to ``limit`` entries, embed their rows' current content, write.

    Returns (entries done, the batch written or None). Rows that already have a vector (embedded by the
    backfill after the entry was queued) are skipped; their entries go too.
    """

    def go(conn: psycopg.Connection) -> tuple[int, BatchResult | None]:
        with conn.transaction():
            # Fenced like a shard: the migration row is read FOR SHARE, so a rollback (which first sets the phase
            # to rolling_back, an UPDATE of that row) waits for this drain to commit, and every later drain sees
            # the fence and writes nothing.
            live = conn.execute(
                "SELECT 1 FROM swarm.migrations WHERE id = %s AND state IN ('running', 'validating', 'completed') "
                "AND phase IS DISTINCT FROM 'rolling_back' FOR SHARE",
                [m.id],
            ).fetchone()
            if live is None:
                return 0, None
            claimed = conn.execute(
                "SELECT seq, row_id FROM swarm.changes WHERE migration_id = %s ORDER BY seq "
                "LIMIT %s FOR UPDATE SKIP LOCKED",
                [m.id, limit],
            ).fetchall()
            if not claimed:
                return 0, None
            row_ids = sorted({r[1] for r in claimed})
            rows = conn.execute(m.target.read_rows_needing(), [row_ids]).fetchall()
            result = None
            if rows:
                b = Batch([r[0] for r in rows], [r[1] for r in rows], rows[-1][0])
                t0 = time.monotonic()
                vectors, errors, truncated = embed(b.texts)
                result = apply_batch(
                    conn,
                    m,
                    b,
                    vectors,
                    errors,
                    worker=worker,
                    embed_seconds=time.monotonic() - t0,
                    truncated=truncated,
                )
            conn.execute("DELETE FROM swarm.changes WHERE seq = ANY(%s)", [[r[0] for r in claimed]])
            return len(claimed), result

    return db.run(go, what="drain_changes")


def enqueue_missing(conn: psycopg.Connection, m: Migration, limit: int = 10_000) -> int:
    """Queue rows that have no new vector, no dead letter and no queue entry (inserted while no trigger was
    there, or skipped); returns how many were queued."""
    return conn.execute(m.target.enqueue_missing(), [m.id, m.id, m.id, int(limit)]).rowcount
