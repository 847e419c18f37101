"""``highdim_*``: the two indexes swarm can build on a 3584-dim column (nomic-embed-code's width), side by side.

* ``hnsw`` on the ``halfvec(3584)`` column itself (``halfvec_cosine_ops``): 7 KB a row in the graph;
* ``hnsw-bq``: hnsw on ``binary_quantize(column)::bit(3584)`` (``bit_hamming_ops``, 448 bytes a row), searched by
  Hamming distance for the top ``swarm.rerank`` candidates, re-ranked by exact halfvec cosine distance.

Both are built as swarm builds them (``Target.create_index`` with ``[swarm]``'s ``hnsw_m``, ``hnsw_ef_construction``
and ``index_build_memory_mb``) and searched as the router searches (``Target.search`` + ``run_search``, the settings
``SET LOCAL`` in each search's transaction) on the same synthetic vectors: ``EmbeddingLike`` at 3584 dims (the
neighbourhood structure measured on MiniLM; nomic-embed-code's own statistics are not known here). Recall@10 is
against numpy's exact top 10, p95 is per search, round trips included; exact search (no index) is the latency
baseline. Each figure is hnsw-bq's value with hnsw-halfvec's as the baseline, so the ratio is bq / halfvec.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.lab import Lab
from bench.results import Result, Target, mean_recall, percentile, ratio
from bench.search import EmbeddingLike, _time_queries, exact_top_k, sql_explain
from swarm.core.log import get_logger

if TYPE_CHECKING:
    import psycopg

log = get_logger()

HIGH_DIM = 3584


def _copy_halfvec(conn: psycopg.Connection, ids: np.ndarray, data: np.ndarray) -> None:
    from pgvector import HalfVector

    with conn.cursor() as cur, cur.copy("COPY vectors (id, v) FROM STDIN WITH (FORMAT BINARY)") as cp:
        cp.set_types(["bigint", "halfvec"])
        for i, v in zip(ids, data, strict=True):
            cp.write_row((int(i), HalfVector(v.astype(np.float16))))


def fig_highdim(lab: Lab) -> list[Result]:
    """Index size, build time, p95 and recall@10 of hnsw on halfvec(3584) and of hnsw-bq with re-ranking."""
    from swarm.store.db import connect, register_vector
    from swarm.store.search import AnnSettings
    from swarm.store.sql import Target as Table

    s = lab.sizes
    conf = lab.base.swarm
    k = 10
    rng = np.random.default_rng(20261201)
    shape = EmbeddingLike(rng, topics=max(1, s.highdim_rows // 10), dim=HIGH_DIM)
    data = shape.sample(rng, s.highdim_rows)
    queries = shape.sample(rng, s.highdim_queries)
    ids = np.arange(1, s.highdim_rows + 1)
    # Ground truth on the values the column stores (halfvec), so recall measures the index, not float16.
    stored = data.astype(np.float16).astype(np.float32)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    truth = exact_top_k(stored, queries, k, ids)

    dsn = lab.database("bench_highdim")
    table = Table("vectors", "id", "content", "embedding", "v")
    conn = connect(dsn)
    arms: dict[str, dict[str, Any]] = {}
    try:
        register_vector(conn)
        conn.execute(f"CREATE TABLE vectors (id bigint PRIMARY KEY, v halfvec({HIGH_DIM}))")
        t = time.perf_counter()
        _copy_halfvec(conn, ids, data)
        conn.execute("VACUUM ANALYZE vectors")
        load_s = time.perf_counter() - t
        table_mb = _one(conn, "SELECT pg_total_relation_size('vectors') / 1e6")
        exact_q = table.search("v", "halfvec", HIGH_DIM)
        n_exact = min(s.search_exact_queries, len(queries))
        _time_queries(conn, exact_q, queries[:n_exact], k)  # warm
        exact_lat, exact_found = _time_queries(conn, exact_q, queries[:n_exact], k)
        exact = {
            "p95_ms": round(percentile(exact_lat, 95), 3),
            "recall_at_10": round(mean_recall(exact_found, truth[:n_exact], k), 4),
        }
        memory = f"{conf.index_build_memory_mb}MB"
        for mid, method, opclass in ((1, "hnsw", "halfvec_cosine_ops"), (2, "hnsw-bq", "bit_hamming_ops")):
            rerank = max(conf.rerank, k) if method == "hnsw-bq" else None
            q = table.search("v", "halfvec", HIGH_DIM, rerank=rerank)
            ann = AnnSettings(max(conf.ef_search, rerank or 0), conf.probes)
            conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", [memory])
            t = time.perf_counter()
            create: Any = table.create_index(
                mid, method, opclass, m=conf.hnsw_m, ef_construction=conf.hnsw_ef_construction, dim=HIGH_DIM
            )
            conn.execute(create)
            build_s = time.perf_counter() - t
            conn.execute("RESET maintenance_work_mem")
            name = table.index_name(mid)
            size_mb = _one(conn, "SELECT pg_relation_size(%s::regclass) / 1e6", [name])
            plan = "\n".join(r[0] for r in conn.execute(sql_explain(q), [queries[0], queries[0], k]).fetchall())
            _time_queries(conn, q, queries, k, ann)  # warm the index's pages
            lat, found = _time_queries(conn, q, queries, k, ann)
            arms[method] = {
                "index_mb": round(float(size_mb), 1),
                "build_s": round(build_s, 1),
                "p50_ms": round(percentile(lat, 50), 3),
                "p95_ms": round(percentile(lat, 95), 3),
                "recall_at_10": round(mean_recall(found, truth, k), 4),
                "uses_index": name in plan,
                "ef_search": ann.ef_search,
                "rerank": rerank,
            }
            log.info("bench.highdim", method=method, **arms[method])
            drop: Any = table.drop_index(mid)
            conn.execute(drop)
    finally:
        conn.close()

    hv, bq = arms["hnsw"], arms["hnsw-bq"]
    common = (
        f"{s.highdim_rows:,} synthetic {HIGH_DIM}-dim unit vectors (EmbeddingLike) in halfvec({HIGH_DIM}) "
        f"({float(table_mb):,.0f} MB table, loaded in {load_s:.0f} s), {len(queries)} held-out queries, k=10, "
        f"hnsw m={conf.hnsw_m}, ef_construction={conf.hnsw_ef_construction}, "
        f"maintenance_work_mem={memory}; halfvec: ef_search {hv['ef_search']}; bq: top {bq['rerank']} by Hamming "
        f"re-ranked, ef_search {bq['ef_search']}; exact search p95 {exact['p95_ms']:.1f} ms"
    )
    details = {"hnsw": hv, "hnsw-bq": bq, "exact": exact, "table_mb": round(float(table_mb), 1)}
    label = "hnsw on halfvec"
    rows = (
        ("highdim_index_mb", "index_mb", "MB", Target("<=", 0.25, "ratio")),
        ("highdim_build_s", "build_s", "s", Target("<=", 1.0, "ratio")),
        ("highdim_p95_ms", "p95_ms", "ms", Target("<=", 50)),
        ("highdim_recall_at_10", "recall_at_10", "", Target(">=", 0.95)),
    )
    return [
        Result(
            fig,
            bq[key],
            unit,
            target,
            baseline=hv[key],
            baseline_label=label,
            ratio=ratio(bq[key], hv[key]),
            ratio_label="hnsw-bq / hnsw-halfvec",
            notes=f"hnsw-bq {_arm(bq)}; hnsw-halfvec {_arm(hv)}; {common}",
            details=details,
        )
        for fig, key, unit, target in rows
    ]


def _one(conn: psycopg.Connection, query: str, params: list[Any] | None = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def _arm(a: dict[str, Any]) -> str:
    return (
        f"{a['index_mb']:,.0f} MB, built in {a['build_s']:.0f} s, p95 {a['p95_ms']:.1f} ms, "
        f"recall@10 {a['recall_at_10']:.3f}{'' if a['uses_index'] else ' (NOT using the index)'}"
    )
