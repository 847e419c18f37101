"""``swarm.index = "hnsw-bq"``: an hnsw index on ``binary_quantize(column)::bit(D)``, searched by Hamming distance
and re-ranked by the exact distance, on the real pgvector (bench/highdim.py measures it at 3584 dims)."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest

from swarm.core.config import load_config
from swarm.migration.index import resolve_method
from swarm.store.search import AnnSettings, run_search
from swarm.store.sql import Target

DIM, ROWS, K = 2304, 1500, 10


@pytest.fixture()
def vectors(conn: psycopg.Connection) -> np.ndarray:
    from pgvector import HalfVector
    from pgvector.psycopg import register_vector

    register_vector(conn)
    rng = np.random.default_rng(7)
    centers = rng.standard_normal((ROWS // 10, DIM)).astype(np.float32)
    data = centers[rng.integers(0, len(centers), ROWS)] + 0.7 * rng.standard_normal((ROWS, DIM)).astype(np.float32)
    data = (data / np.linalg.norm(data, axis=1, keepdims=True)).astype(np.float16).astype(np.float32)
    conn.execute(f"CREATE TABLE vecs (id bigint PRIMARY KEY, content text, embedding vector(3), v halfvec({DIM}))")
    with conn.cursor() as cur, cur.copy("COPY vecs (id, v) FROM STDIN WITH (FORMAT BINARY)") as cp:
        cp.set_types(["bigint", "halfvec"])
        for i, row in enumerate(data):
            cp.write_row((i + 1, HalfVector(row.astype(np.float16))))
    conn.execute("ANALYZE vecs")
    return data


def test_bit_index_with_rerank_finds_the_exact_neighbours(conn: psycopg.Connection, vectors: np.ndarray) -> None:
    table = Target("vecs", "id", "content", "embedding", "v")
    conn.execute(table.create_index(1, "hnsw-bq", "bit_hamming_ops", m=16, ef_construction=64, dim=DIM))
    indexdef = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [table.index_name(1)]).fetchone()
    assert f"(binary_quantize(v))::bit({DIM})" in indexdef[0] and "bit_hamming_ops" in indexdef[0]
    size = conn.execute("SELECT pg_relation_size(%s::regclass)", [table.index_name(1)]).fetchone()[0]
    assert size < ROWS * DIM * 2 / 4, "a bit index should be far smaller than the halfvec column"

    cfg = load_config(None, swarm={"ef_search": 40, "rerank": 100})
    ann = AnnSettings.of(cfg, rerank=cfg.swarm.rerank)
    assert ann.ef_search == 100  # an hnsw scan returns at most ef_search candidates: raised to the re-rank depth
    q = table.search("v", "halfvec", DIM, rerank=cfg.swarm.rerank)
    rng = np.random.default_rng(8)
    noise = rng.standard_normal((20, DIM)).astype(np.float32) * np.float32(0.5 / np.sqrt(DIM))
    queries = vectors[rng.choice(ROWS, 20, replace=False)] + noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    plan = "\n".join(r[0] for r in conn.execute(psycopg.sql.SQL("EXPLAIN ") + q, [queries[0], queries[0], K]))
    assert table.index_name(1) in plan, plan
    recalls, distances_sorted = [], True
    for v in queries:
        rows = run_search(conn, q, v, K, ann)
        truth = set((np.argsort(-(vectors @ v))[:K] + 1).tolist())
        recalls.append(len({int(r[0]) for r in rows} & truth) / K)
        d = [float(r[1]) for r in rows]
        distances_sorted &= d == sorted(d)
    assert distances_sorted, "results must come back by exact cosine distance"
    assert np.mean(recalls) >= 0.9, recalls


def test_auto_picks_the_measured_index_by_dimension() -> None:
    assert resolve_method("auto", 384) == "hnsw"
    assert resolve_method("auto", 3584) == "hnsw-bq"
    assert resolve_method("hnsw", 3584) == "hnsw"
