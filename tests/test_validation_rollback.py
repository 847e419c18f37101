"""A migration to a model whose vectors mean nothing fails validation and rolls back by itself (real swarm).

The new model is a GGUF with all-MiniLM-L6-v2's architecture, shapes and vocabulary but random weights (the
``random_bert_gguf`` fixture): it loads, embeds every row and passes every structural check, so only the
validator's comparison of search results can catch it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from swarm import commands
from swarm import migration as mig
from swarm.core.errors import EXIT_ROLLED_BACK


@pytest.mark.slow
def test_a_meaningless_model_fails_validation_and_rolls_back_by_itself(
    swarm_actors: dict[str, Any],
    make_config: Any,
    random_bert_gguf: Path,
    minilm_f16: Path,
    minilm_q8: Path,
    tmp_path: Path,
) -> None:
    from swarm.ops.demo import seed
    from swarm.serving.router import Router

    (tmp_path / "alerts.yaml").write_text("alerts: []\n")
    cfg = make_config(
        embedding={"model": "random-bert", "model_path": str(random_bert_gguf), "dimension": 384},
        swarm={"ray_address": swarm_actors["address"], "migrators": 1, "validators": 1, "shard_rows": 100},
        validation={"max_p95_latency_ms": 60_000},  # only the quality gate may fail here
        rollout={"auto": True, "alerts": str(tmp_path / "alerts.yaml"), "window_seconds": 1.0},
    )
    seed(cfg, limit=300, n_queries=60, progress=False)
    dsn = cfg.database.dsn.get_secret_value()
    with psycopg.connect(dsn, autocommit=True) as c:
        before = mig.legacy_checksum(c, mig.target_for(cfg, "bigint"))

    assert commands.orchestrate(cfg, progress=False) == EXIT_ROLLED_BACK

    with psycopg.connect(dsn, autocommit=True) as c:
        m = mig.latest(c, cfg)
        assert m is not None and m.state == "rolled_back"
        assert m.rollout_percent == 0
        assert m.reason.startswith("validation failed: MRR@10 dropped by")
        columns = {
            r[0]
            for r in c.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'documents'"
            ).fetchall()
        }
        assert cfg.database.new_column not in columns
        assert (
            c.execute("SELECT count(*) FROM pg_indexes WHERE indexname = %s", [m.target.index_name(m.id)]).fetchone()[0]
            == 0
        )
        assert mig.legacy_checksum(c, m.target) == before == m.legacy_checksum
        validation = c.execute(
            "SELECT detail FROM swarm.events WHERE kind = 'validation' AND migration_id = %s", [m.id]
        ).fetchone()[0]
        rollback = c.execute(
            "SELECT detail FROM swarm.events WHERE kind = 'rollback' AND migration_id = %s", [m.id]
        ).fetchone()[0]
        rolled_out = c.execute(
            "SELECT count(*) FROM swarm.events WHERE kind = 'rollout_step' AND migration_id = %s", [m.id]
        ).fetchone()[0]
    # Every row was embedded (the model works), and the answers are noise next to the legacy model's.
    assert validation["rows_with_new_vector"] == validation["rows_total"] == 300
    assert validation["queries"] == validation["labelled"] == 60
    assert validation["legacy"]["mrr_at_10"] > 0.5
    assert validation["new"]["mrr_at_10"] < 0.2
    assert validation["new"]["errors"] == 0
    assert rollback["legacy_intact"] is True
    assert rolled_out == 0  # the rollout never started: no query was ever served by the random model

    # Searches go on, from the legacy column.
    router = Router(cfg, dsn)
    r = router.search("split a string on commas", k=5, caller="after-rollback")
    router.close()
    assert r.arm == "legacy" and len(r.ids) == 5
