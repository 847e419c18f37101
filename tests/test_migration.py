"""The migration's logic in-process: real PostgreSQL, real GGUF, the coordinator and migrators as plain classes
on threads (Ray's own part is in test_swarm_ray.py)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import psycopg
import pytest

from agents.migrator import DataMigrator
from swarm import migration as mig
from swarm.commands import preflight
from swarm.store.db import Database
from tests.support.runner import run_in_process
from tests.support.texts import code_text
from tests.support.writer import AppWriter


def create_table(conn: psycopg.Connection, table: str, key: str, rows: int, seed: int = 0) -> None:
    from pgvector.psycopg import register_vector

    register_vector(conn)
    rng = random.Random(seed)
    conn.execute(f"CREATE TABLE {table} (id {key} PRIMARY KEY, content text, embedding vector(384))")
    with conn.cursor() as cur:
        for i in range(rows):
            k: Any = i + 1
            if key == "uuid":
                k = f"00000000-0000-4000-8000-{i + 1:012d}"
            elif key == "text":
                k = f"doc-{rng.randrange(10**9):09d}-{i}"
            cur.execute(
                f"INSERT INTO {table} (id, content, embedding) VALUES (%s, %s, %s)",
                [k, code_text(rng, words=(3, 30)), np.ones(384, dtype=np.float32)],
            )


def check_vectors(conn: psycopg.Connection, table: str, model_path: str) -> int:
    """Every row's new vector is the embedding of its current content. Returns the rows checked."""
    from pgvector.psycopg import register_vector

    from model.embedder import LlamaEmbedder

    register_vector(conn)
    rows = conn.execute(f"SELECT id::text, content, nomic_embedding FROM {table} ORDER BY id").fetchall()
    emb = LlamaEmbedder(model_path, cache_size=0)
    good = [(r[0], r[1], r[2]) for r in rows if r[1] and r[1].strip()]
    expected = emb.embed([r[1] for r in good])
    for (rid, _content, vec), e in zip(good, expected, strict=True):
        assert vec is not None, f"row {rid} has no new vector"
        cos = float(np.dot(np.asarray(vec.to_numpy() if hasattr(vec, "to_numpy") else vec), e))
        assert cos > 0.999, f"row {rid}: vector is not of its current content (cos {cos:.4f})"
    return len(good)


def test_backfill_with_live_writes_and_bad_rows(make_config, dsn: str, conn: psycopg.Connection) -> None:  # type: ignore[no-untyped-def]
    create_table(conn, "docs", "bigint", 300)
    conn.execute("INSERT INTO docs VALUES (9001, NULL, NULL), (9002, '', NULL), (9003, '   \t\n', NULL)")
    checksum_before = mig.legacy_checksum(conn, mig.target_for(make_config(database={"table": "docs"}), "bigint"))
    cfg = make_config(
        database={"table": "docs"}, swarm={"shard_rows": 50, "validators": 0}, embedding={"batch_size": 8}
    )
    app = AppWriter(dsn, "docs", (1, 300), rate=50, until="backfill", seed=7, next_id=20000)
    run = run_in_process(cfg, dsn, during=app.run)
    m, result = run.migration, run.result
    assert result["state"] == "completed", result
    assert app.writes.total > 10, app.writes.counts
    st = mig.status(conn, mig.load(conn, m.id))
    total = conn.execute("SELECT count(*) FROM docs").fetchone()[0]
    assert st["rows_total"] == total
    assert st["rows_failed"] == 3
    assert st["rows_done"] + st["rows_failed"] == total
    reasons = dict(conn.execute("SELECT row_id, reason FROM swarm.dead_letters").fetchall())
    assert reasons == {
        "9001": "NULL content",
        "9002": "empty content",
        "9003": "whitespace-only content",
    } or set(reasons) == {"9001", "9002", "9003"}
    checked = check_vectors(conn, "docs", cfg.embedding.model_path)
    assert checked == total - 3
    # The legacy column is exactly what it was (rows the app deleted aside: compare on surviving ids).
    assert (
        conn.execute(
            "SELECT count(*) FROM docs WHERE embedding IS NOT NULL AND embedding <> %s",
            [np.ones(384, dtype=np.float32)],
        ).fetchone()[0]
        == 0
    )
    assert checksum_before  # taken before any change
    # The ANN index exists on the new column, built as configured (hnsw by default).
    indexdef = conn.execute(
        "SELECT indexdef FROM pg_indexes WHERE tablename = 'docs' AND indexdef LIKE '%USING hnsw%'"
    ).fetchone()
    assert indexdef is not None
    assert f"m='{cfg.swarm.hnsw_m}', ef_construction='{cfg.swarm.hnsw_ef_construction}'" in indexdef[0]


@pytest.mark.parametrize("key", ["uuid", "text"])
def test_key_types(make_config, dsn: str, conn: psycopg.Connection, key: str) -> None:  # type: ignore[no-untyped-def]
    create_table(conn, "docs", key, 230, seed=3)
    cfg = make_config(database={"table": "docs"}, swarm={"shard_rows": 50, "validators": 0})
    run = run_in_process(cfg, dsn)
    m, result = run.migration, run.result
    assert result["state"] == "completed"
    shards = conn.execute(
        "SELECT count(*), sum(rows_done) FROM swarm.shards WHERE migration_id = %s", [m.id]
    ).fetchone()
    assert shards == (5, 230)
    assert check_vectors(conn, "docs", cfg.embedding.model_path) == 230


def test_quoted_mixed_case_schema_qualified_table(make_config, dsn: str, conn: psycopg.Connection) -> None:  # type: ignore[no-untyped-def]
    conn.execute('CREATE SCHEMA "Code"')
    conn.execute('CREATE TABLE "Code"."Snippets" ("Id" int PRIMARY KEY, "Body" text, "Vec" vector(384))')
    conn.execute("""INSERT INTO "Code"."Snippets" SELECT g, 'def f' || g || '(): return ' || g, NULL
                    FROM generate_series(1, 120) g""")
    cfg = make_config(
        database={
            "table": "Code.Snippets",
            "id_column": "Id",
            "content_column": "Body",
            "legacy_column": "Vec",
            "new_column": "NewVec",
        },
        swarm={"shard_rows": 40, "validators": 0},
    )
    result = run_in_process(cfg, dsn).result
    assert result == {"state": "completed", "rows_total": 120, "rows_done": 120, "rows_failed": 0}
    assert conn.execute('SELECT count("NewVec") FROM "Code"."Snippets"').fetchone()[0] == 120


def test_repeated_batch_changes_nothing_and_stale_owner_is_fenced(
    make_config, dsn: str, conn: psycopg.Connection
) -> None:  # type: ignore[no-untyped-def]
    create_table(conn, "docs", "bigint", 64)
    cfg = make_config(
        database={"table": "docs"}, swarm={"shard_rows": 64, "validators": 0}, embedding={"batch_size": 16}
    )
    db = Database(dsn)
    info, table, server = preflight(cfg, db)
    m = mig.plan(db, cfg, name="t", model_id="m", model_sha256=info.sha256, dimension=384, server=server, table=table)
    w = DataMigrator("data-migrator-0", cfg.to_payload(dsn), n_threads=1)
    first = mig.claim_shard(conn, m.id, "data-migrator-0")
    assert first == (0, 1)
    # The coordinator presumes the owner dead and hands the shard out again: attempt 2.
    conn.execute("UPDATE swarm.shards SET state = 'pending' WHERE migration_id = %s", [m.id])
    second = mig.claim_shard(conn, m.id, "data-migrator-1")
    assert second == (0, 2)
    stale = w.run_shard(m.id, 0, 1)
    assert stale["fenced"] is True
    assert conn.execute("SELECT count(nomic_embedding) FROM docs").fetchone()[0] == 0, "a fenced owner wrote"
    done = w.run_shard(m.id, 0, 2)
    assert done["rows"] == 64 and not done["fenced"]
    snapshot = conn.execute("SELECT id, nomic_embedding::text FROM docs ORDER BY id").fetchall()
    # Running the finished shard's last batch again (a retried transaction) finds nothing left to do.
    conn.execute("UPDATE swarm.shards SET state = 'running', last_key = NULL WHERE migration_id = %s", [m.id])
    again = w.run_shard(m.id, 0, 2)
    assert again["rows"] == 0
    assert conn.execute("SELECT id, nomic_embedding::text FROM docs ORDER BY id").fetchall() == snapshot
