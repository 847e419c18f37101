"""The real target end to end: nomic-embed-code's architecture migrated by the whole swarm (real Ray, real PostgreSQL).

The new model is the random-weights qwen2 fixture (tests/fix_models.py) at nomic-embed-code's width, 3584, pooled by
its last token, with configs/nomic-embed-code.toml's prefix, max_tokens, index and rerank. Its vectors mean nothing,
so the validation gates are set so that a random model can pass them (any MRR drop, any overlap, a generous latency
on this shared machine): the test is about the path (a halfvec(3584) column, its hnsw-bq index, the default above
2000 dims, prefixes, the validator running on it), not about quality, which test_validation_rollback.py covers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from model.embedder import LlamaEmbedder
from swarm import commands
from swarm import migration as mig
from swarm.core.config import load_config
from tests.fix_models import QWEN2_DIM, REPO
from tests.test_migration import check_vectors

QUERY = "read a file line by line"


@pytest.mark.slow  # about 4 minutes on 2 shared cores (Ray start, seeding, two models, validation)
def test_orchestrate_migrates_into_halfvec_with_hnsw_and_validates(
    swarm_actors: dict[str, Any], make_config: Any, qwen2_gguf: Path, minilm_f16: Path, minilm_q8: Path
) -> None:
    from swarm.ops.demo import seed
    from swarm.serving.router import Router

    shipped = load_config(REPO / "configs/nomic-embed-code.toml")
    target = shipped.embedding
    cfg = make_config(
        embedding={
            **target.model_dump(include={"model", "dimension", "query_prefix", "document_prefix", "max_tokens"}),
            "model_path": str(qwen2_gguf),
            "batch_size": 8,
        },
        swarm={
            **shipped.swarm.model_dump(include={"index", "rerank"}),
            "ray_address": swarm_actors["address"],
            "migrators": 1,
            "validators": 1,
            "shard_rows": 60,
        },
        # Gates a random model can pass: quality is not what this test is about (see the module docstring).
        validation={"max_mrr_drop": 1.0, "min_overlap_at_k": 0.0, "max_p95_latency_ms": 5_000},
    )
    assert cfg.embedding.dimension == QWEN2_DIM and cfg.embedding.query_prefix.startswith("Represent this query")
    seed(cfg, limit=200, n_queries=30, progress=False)
    dsn = cfg.database.dsn.get_secret_value()

    assert commands.orchestrate(cfg, progress=False) == 0

    with psycopg.connect(dsn, autocommit=True) as c:
        m = mig.latest(c, cfg)
        assert m is not None and m.state == "completed", (m.state, m.reason) if m else None
        assert (m.dimension, m.column_type) == (QWEN2_DIM, "halfvec")
        col = c.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'documents'::regclass AND attname = %s",
            [cfg.database.new_column],
        ).fetchone()[0]
        assert col == f"halfvec({QWEN2_DIM})"
        indexdef = c.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [m.index_name]).fetchone()[0]
        # index = "auto" (the shipped config): above 2000 dims, hnsw on the binary quantization, re-ranked.
        assert "USING hnsw" in indexdef and "binary_quantize" in indexdef and "bit_hamming_ops" in indexdef
        validation = c.execute(
            "SELECT detail FROM swarm.events WHERE kind = 'validation' AND migration_id = %s ORDER BY id DESC LIMIT 1",
            [m.id],
        ).fetchone()[0]
        # Documents were embedded without the query prefix: each stored vector is its content's, unprefixed.
        assert check_vectors(c, "documents", str(qwen2_gguf)) == 200
    assert validation["rows_with_new_vector"] == validation["rows_total"] == 200
    assert validation["queries"] == 30 and validation["new"]["errors"] == 0 and validation["failures"] == []

    # Queries are embedded with the prefix (the router is what the validator searched through).
    router = Router(cfg, dsn, record=False)
    try:
        got, _ = router.arms["new"].embed(QUERY)
        # The new arm as the validator searched it (the rollout is at 0%, so router.search would answer from legacy).
        hit, distances, _ = router.run_arm("new", QUERY, 5)
    finally:
        router.close()
    with LlamaEmbedder(qwen2_gguf, cache_size=0, n_threads=2) as plain:
        prefixed, bare = plain.embed([cfg.embedding.query_prefix + QUERY, QUERY])
    assert float(np.dot(got, prefixed)) > 0.999 and float(np.dot(got, bare)) < 0.99
    assert hit.error is None and len(hit.ids) == 5 and distances == sorted(distances)
    assert mig.search_rerank(m, 5) == shipped.swarm.rerank  # the router searched the bit index, re-ranked
