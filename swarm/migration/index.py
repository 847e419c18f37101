"""The ANN index on the new column: ``CREATE INDEX CONCURRENTLY`` at the end of the backfill, and its progress."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import psycopg

from swarm.core.log import get_logger
from swarm.migration.record import Migration
from swarm.store.db import Database, ServerInfo, one

if TYPE_CHECKING:
    from swarm.core.config import SwarmConfig

log = get_logger()


def ivfflat_lists(rows: int) -> int:
    """pgvector's guidance: rows/1000 up to 1M rows, sqrt(rows) above."""
    return max(1, rows // 1000) if rows <= 1_000_000 else max(1, int(math.sqrt(rows)))


def index_settings(m: Migration) -> SwarmConfig:
    """The ``[swarm]`` section the migration was planned with (its index parameters; defaults for keys a
    migration planned by an older swarm did not record)."""
    from swarm.core.config import SwarmConfig

    recorded = (m.config or {}).get("swarm") or {}
    return SwarmConfig.model_validate({k: v for k, v in recorded.items() if k in SwarmConfig.model_fields})


def resolve_method(method: str, dimension: int) -> str:
    """``swarm.index`` with ``auto`` resolved: hnsw on the column up to 2000 dims, and above (see bench/highdim.py)."""
    if method != "auto":
        return method
    return "hnsw" if dimension <= 2000 else HIGH_DIM_DEFAULT


#: ``auto`` above 2000 dims. Measured by bench/highdim.py (25,000 synthetic 3584-dim vectors, hnsw m=16,
#: ef_construction=200, 512 MB maintenance_work_mem, 2 shared cores): hnsw on halfvec 205 MB, built in 223 s, p95
#: 10.6 ms, recall@10 0.998; hnsw-bq (rerank 200) 19.5 MB, 54.5 s, p95 24.6 ms, recall@10 0.999 (at 50,000: 409.6 MB,
#: 440 s, 12.3 ms, 0.969 against 39.1 MB, 139.5 s, 22.3 ms, 0.982). The same recall
#: and a p95 well inside the 50 ms gate for a tenth of the index and a quarter of the build; the halfvec graph
#: also outgrows maintenance_work_mem and shared_buffers first (7 KB a row: 0.8 GB at 100k rows, 70 GB at 10M).
HIGH_DIM_DEFAULT = "hnsw-bq"


def search_rerank(m: Migration, k: int) -> int | None:
    """How many candidates a search of ``m``'s new column re-ranks by exact distance: ``swarm.rerank`` (at least
    ``k``) when its index is ``hnsw-bq``, else None (the index orders by the exact distance itself)."""
    s = index_settings(m)
    if resolve_method(s.index, m.dimension) != "hnsw-bq":
        return None
    return max(s.rerank, int(k))


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
    method = resolve_method(method, m.dimension)
    column_type, indexable = server.column_type(m.dimension)
    if method == "hnsw-bq":  # binary_quantize came with halfvec (pgvector 0.7); bit indexes go to 64,000 dims
        indexable = server.has_halfvec and m.dimension <= 64_000
    if not indexable:
        log.warning("index.skipped", dimension=m.dimension, reason="too many dimensions for an ANN index here")
        return None
    s = swarm if swarm is not None else index_settings(m)
    opclass = "bit_hamming_ops" if method == "hnsw-bq" else f"{m.column_type}_cosine_ops"
    lists = None
    if method == "ivfflat":
        with_vector = db.run(lambda c: c.execute(m.target.count_with_vector()).fetchone(), what="count")
        lists = ivfflat_lists(one(with_vector, "the count of new vectors")[0])
    create = m.target.create_index(
        m.id, method, opclass, lists, m=s.hnsw_m, ef_construction=s.hnsw_ef_construction, dim=m.dimension
    )

    def go(conn: psycopg.Connection) -> None:
        # Checked before every attempt (a cancelled build raises QueryCanceled, which Database.run retries): once
        # a rollback has begun, the build stops for good.
        state = conn.execute("SELECT state, phase FROM swarm.migrations WHERE id = %s", [m.id]).fetchone()
        if state is None or state[0] in ("rolled_back", "failed") or state[1] == "rolling_back":
            raise IndexBuildCancelled(f"migration {m.id} is being rolled back; the index build stops")
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
    # Its own session, named after the migration, so a rollback can find the build and cancel it.
    builder = Database(db.dsn, application_name=index_session(m.id), retry_s=db.retry_s)
    try:
        builder.run(go, what="create_index")
    finally:
        builder.close()
    name = m.target.index_name(m.id)
    db.run(
        lambda c: c.execute("UPDATE swarm.migrations SET index_name = %s WHERE id = %s", [name, m.id]),
        what="ix",
    )
    return name


class IndexBuildCancelled(Exception):
    """The migration is being rolled back: its index build stopped."""


def index_session(mid: int) -> str:
    return f"swarm:index:{mid}"


def cancel_build(conn: psycopg.Connection, mid: int, timeout: float = 30.0) -> int:
    """Cancel migration ``mid``'s index build (``pg_cancel_backend`` of its session) and wait until it has
    stopped; returns how many sessions were cancelled. The INVALID index it leaves goes with the column, or is
    dropped by the rollback when the column stays."""
    import time

    cancelled = one(
        conn.execute(
            "SELECT count(*) FILTER (WHERE pg_cancel_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = current_database() AND state = 'active'",
            [index_session(mid)],
        ).fetchone(),
        "the count of cancelled index builds",
    )[0]
    deadline = time.monotonic() + timeout
    while cancelled and time.monotonic() < deadline:
        busy = one(
            conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state = 'active' "
                "AND datname = current_database()",
                [index_session(mid)],
            ).fetchone(),
            "the count of index builds still running",
        )[0]
        if not busy:
            break
        time.sleep(0.1)
    return int(cancelled)


def index_progress(conn: psycopg.Connection, mid: int | None = None) -> dict[str, Any] | None:
    """The running index build of migration ``mid`` (any swarm build when None), from
    ``pg_stat_progress_create_index``."""
    r = conn.execute(
        "SELECT p.phase, p.blocks_done, p.blocks_total, p.tuples_done, p.tuples_total "
        "FROM pg_stat_progress_create_index p JOIN pg_stat_activity a ON a.pid = p.pid "
        "WHERE p.command = 'CREATE INDEX CONCURRENTLY' AND a.application_name LIKE %s LIMIT 1",
        [index_session(mid) if mid is not None else "swarm:index:%"],
    ).fetchone()
    if r is None:
        return None
    return dict(zip(("phase", "blocks_done", "blocks_total", "tuples_done", "tuples_total"), r, strict=True))
