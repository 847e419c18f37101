"""What the swarm does with a verdict: a model whose vectors mean nothing is rolled back during the backfill, and
a validation that cannot decide holds the rollout instead of passing.

The bad model is a GGUF with all-MiniLM-L6-v2's architecture, shapes and vocabulary but random weights (the
``random_bert_gguf`` fixture): it loads, embeds every row and passes every structural check, so only the
validators' comparison of search results can catch it, and they do before the table has paid for it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psycopg
import pytest

from swarm import commands
from swarm import migration as mig
from swarm.core.config import Config
from swarm.core.errors import EXIT_ROLLED_BACK
from tests.test_router import Migrated, migrated, quality_root, write_config  # noqa: F401  (fixtures)

STOPPED = re.compile(r"stopped at ([0-9.]+)%")


def _random_model_config(
    make_config: Any, random_bert_gguf: Path, tmp_path: Path, validation: dict[str, Any] | None = None, **swarm: Any
) -> Config:
    (tmp_path / "alerts.yaml").write_text("alerts: []\n")
    return make_config(
        embedding={"model": "random-bert", "model_path": str(random_bert_gguf), "dimension": 384},
        swarm=swarm,
        # Only the quality gate may fail here.
        validation={"max_p95_latency_ms": 60_000, **(validation or {})},
        rollout={"auto": True, "alerts": str(tmp_path / "alerts.yaml"), "window_seconds": 1.0},
    )


def _check_rolled_back_mid_backfill(cfg: Config, before: str) -> tuple[dict[str, Any], float]:
    """The migration rolled back during its backfill, by a round; returns that round and the share embedded."""
    dsn = cfg.database.dsn.get_secret_value()
    with psycopg.connect(dsn, autocommit=True) as c:
        m = mig.latest(c, cfg)
        assert m is not None and m.state == "rolled_back" and m.rollout_percent == 0
        assert m.reason.startswith("validation failed during the backfill (round "), m.reason
        assert "MRR@10 dropped by" in m.reason
        columns = {
            r[0]
            for r in c.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'documents'"
            ).fetchall()
        }
        assert cfg.database.new_column not in columns
        assert mig.legacy_checksum(c, m.target) == before == m.legacy_checksum
        rounds = [
            r[0]
            for r in c.execute(
                "SELECT detail FROM swarm.events WHERE kind = 'validation' AND migration_id = %s ORDER BY id", [m.id]
            ).fetchall()
        ]
        rollback = c.execute(
            "SELECT detail FROM swarm.events WHERE kind = 'rollback' AND migration_id = %s", [m.id]
        ).fetchone()[0]
        rolled_out = c.execute(
            "SELECT count(*) FROM swarm.events WHERE kind = 'rollout_step' AND migration_id = %s", [m.id]
        ).fetchone()[0]
        shards_done = c.execute(
            "SELECT count(*) FILTER (WHERE state = 'done'), count(*) FROM swarm.shards WHERE migration_id = %s",
            [m.id],
        ).fetchone()
    assert rollback["legacy_intact"] is True
    assert rolled_out == 0  # no query was ever served by the random model
    assert shards_done[0] < shards_done[1]  # the backfill never finished
    assert all(r["stage"] == "backfill" for r in rounds)  # no final round: it never got that far
    failed = rounds[-1]
    assert failed["verdict"] == "FAIL" and failed["partial"] is True
    assert all(r["verdict"] == "INCONCLUSIVE" for r in rounds[:-1])
    assert failed["legacy"]["mrr_at_10"] > 0.5 and failed["new"]["mrr_at_10"] < 0.3
    assert failed["mrr_drop_ci"][0] > cfg.validation.max_mrr_drop  # the whole interval beyond the limit
    assert failed["errors_by_arm"] == {"legacy": 0, "new": 0}
    assert failed["judged"] >= cfg.validation.min_queries
    stopped = float(STOPPED.search(m.reason).group(1))  # type: ignore[union-attr]
    assert failed["percent_embedded"] <= stopped < 100
    return failed, stopped


def test_a_meaningless_model_is_rolled_back_during_the_backfill_by_the_ray_swarm(
    swarm_actors: dict[str, Any],
    make_config: Any,
    random_bert_gguf: Path,
    minilm_f16: Path,
    minilm_q8: Path,
    tmp_path: Path,
) -> None:
    """Two validator actors share each round's queries; the first round with enough judged queries fails and
    the coordinator rolls back there (exit 3)."""
    from swarm.ops.demo import seed
    from swarm.serving.router import Router

    cfg = _random_model_config(
        make_config,
        random_bert_gguf,
        tmp_path,
        ray_address=swarm_actors["address"],
        migrators=1,
        validators=2,
        shard_rows=30,
        # A small table goes fast: cap the backfill's pace (a knob for busy primaries) so that a round has the
        # seconds it needs on a loaded 2-core machine before the table is done.
        max_rows_per_second=12,
        validation={"min_queries": 10},
    )
    seed(cfg, limit=240, n_queries=150, progress=False)
    dsn = cfg.database.dsn.get_secret_value()
    with psycopg.connect(dsn, autocommit=True) as c:
        before = mig.legacy_checksum(c, mig.target_for(cfg, "bigint"))

    assert commands.orchestrate(cfg, progress=False) == EXIT_ROLLED_BACK

    failed, stopped = _check_rolled_back_mid_backfill(cfg, before)
    assert failed["validators"] == ["validator-0", "validator-1"]  # both judged a share of the queries
    assert failed["rows_total"] == 240

    # Searches go on, from the legacy column.
    router = Router(cfg, dsn)
    r = router.search("split a string on commas", k=5, caller="after-rollback")
    router.close()
    assert r.arm == "legacy" and len(r.ids) == 5


@pytest.mark.slow
def test_on_the_demo_table_the_random_model_is_rolled_back_within_a_fifth_of_the_rows(
    swarm_actors: dict[str, Any],
    make_config: Any,
    random_bert_gguf: Path,
    minilm_f16: Path,
    minilm_q8: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The issue's target, on the whole demo table with the demo's swarm and validation settings."""
    from swarm.ops.demo import seed

    cfg = _random_model_config(
        make_config,
        random_bert_gguf,
        tmp_path,
        ray_address=swarm_actors["address"],
        migrators=2,
        validators=1,
        shard_rows=500,
    )
    seed(cfg, progress=False)
    dsn = cfg.database.dsn.get_secret_value()
    with psycopg.connect(dsn, autocommit=True) as c:
        before = mig.legacy_checksum(c, mig.target_for(cfg, "bigint"))
    assert commands.orchestrate(cfg, progress=True) == EXIT_ROLLED_BACK
    closing = capsys.readouterr().out
    failed, stopped = _check_rolled_back_mid_backfill(cfg, before)
    assert stopped <= 20.0
    assert f"stopped at {stopped:.1f}%" in closing  # the closing note gives the share embedded
    with capsys.disabled():
        print(f"\nrandom model rolled back: round {failed['round']} at {failed['percent_embedded']:.1f}%, {stopped}%")


def test_an_inconclusive_final_validation_holds_the_rollout_instead_of_passing(migrated: Migrated) -> None:  # noqa: F811
    """Too few queries to decide: the migration completes (every vector kept, the sync trigger following), with
    the reason on record, the rollout at 0% although ``rollout.auto`` is on, and decommission refused."""
    from swarm.ops.decommission import refusals
    from tests.support.runner import run_in_process

    # The template's table again, its earlier migration rolled back: a new migration of the same table.
    db = migrated.db()
    mig.rollback(db, migrated.migration(), migrated.cfg, reason="make room for the test")
    db.close()
    cfg = write_config(
        migrated.root,
        migrated.dsn,
        validation={"queries": str(migrated.queries_file), "min_queries": 31, "max_p95_latency_ms": 60_000},
        rollout={"auto": True, "alerts": str(migrated.root / "alerts.yaml"), "window_seconds": 1.0},
    )
    run = run_in_process(cfg, migrated.dsn, migrators=1, validators=1, close=True)
    assert run.result["state"] == "completed"
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        m = mig.load(c, run.migration.id)
        final = c.execute(
            "SELECT detail FROM swarm.events WHERE kind = 'validation' AND migration_id = %s ORDER BY id DESC LIMIT 1",
            [m.id],
        ).fetchone()[0]
        steps = c.execute(
            "SELECT count(*) FROM swarm.events WHERE kind = 'rollout_step' AND migration_id = %s", [m.id]
        ).fetchone()[0]
        vectors = c.execute(m.target.count_with_vector()).fetchone()[0]
        c.execute("UPDATE swarm.migrations SET rollout_percent = 100 WHERE id = %s", [m.id])
        why = refusals(c, cfg, mig.load(c, m.id))
    assert final["stage"] == "final" and final["verdict"] == "INCONCLUSIVE"
    assert final["failures"] == ["only 30 of 30 queries could be judged (validation.min_queries 31)"]
    assert m.state == "completed" and m.rollout_percent == 0 and steps == 0
    assert m.reason == "validation INCONCLUSIVE, rollout held at 0%: " + final["failures"][0]
    assert vectors == 60  # nothing was destroyed
    assert why == [
        "the last validation was INCONCLUSIVE: only 30 of 30 queries could be judged (validation.min_queries 31); "
        "run `python -m swarm validate` again (more queries: validation.sample_queries)"
    ]
