"""Search-quality metrics and gates, the validator on a real migrated table, and ``assess``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import psycopg
import pytest

from swarm.core.config import ValidationConfig
from swarm.core.errors import ConfigError
from swarm.quality import (
    ArmSummary,
    Hit,
    Query,
    check_gates,
    load_queries,
    mean_overlap,
    mrr_at_k,
    ndcg_at_k,
    overlap_at_k,
    percentile,
    recall_at_k,
    summarize,
)
from tests.test_router import Migrated, migrated, quality_root  # noqa: F401  (fixtures)


# ------------------------------------------------------------------------------------------------------------
# Metrics, computed by hand
# ------------------------------------------------------------------------------------------------------------
def test_ranking_metrics_match_their_definitions() -> None:
    ranked = ["7", "3", "9", "1", "4"]
    assert mrr_at_k(ranked, {"9"}) == pytest.approx(1 / 3)
    assert mrr_at_k(ranked, {"42"}) == 0.0
    assert mrr_at_k(ranked, {"4"}, k=3) == 0.0  # below the cut
    # Relevant at ranks 1 and 3 of 2 relevant: (1 + 1/log2(4)) / (1 + 1/log2(3)).
    assert ndcg_at_k(ranked, {"7", "9"}) == pytest.approx((1 + 0.5) / (1 + 1 / math.log2(3)))
    assert ndcg_at_k(ranked, {"7"}) == 1.0
    assert recall_at_k(ranked, {"3", "4", "8"}, k=5) == pytest.approx(2 / 3)
    assert recall_at_k(ranked, {"3", "4", "8"}, k=2) == pytest.approx(1 / 2)  # at most k relevant can be found
    assert overlap_at_k(["a", "b", "c", "d"], ["d", "c", "x", "y"], k=4) == 0.5
    assert overlap_at_k(["a", "b"], ["b", "c"], k=10) == 0.5  # both shorter than k: over the longer list
    assert percentile([1, 2, 3, 4, 100], 50) == 3.0
    assert percentile([], 95) is None


def test_summary_counts_errors_apart_and_gates_name_numbers_and_limits() -> None:
    queries = [Query("a", frozenset({"1"})), Query("b", frozenset({"2"})), Query("c", frozenset({"3"}))]
    legacy = [Hit(["1", "9"], 5, 1), Hit(["2"], 5, 2), Hit(["3"], 5, 3)]
    new = [Hit(["9", "1"], 5, 1), Hit(["8"], 5, 90), Hit(error="OperationalError: gone")]
    lg, nw = summarize(queries, legacy, 10), summarize(queries, new, 10)
    assert lg.mrr_at_10 == 1.0 and lg.errors == 0
    assert nw.errors == 1 and nw.error_rate == pytest.approx(1 / 3)
    assert nw.mrr_at_10 == pytest.approx((0.5 + 0) / 2)  # the failed query is an error, not a zero
    assert mean_overlap(legacy, new, 10) == pytest.approx((1.0 + 0.0) / 2)
    failures = check_gates(lg, nw, mean_overlap(legacy, new, 10), ValidationConfig(max_p95_latency_ms=50))
    assert any("MRR@10 dropped by 0.750" in f and "max_mrr_drop 0.05" in f for f in failures)
    assert any("error rate" in f and "33.33%" in f for f in failures)
    assert any("p95 search latency" in f and "> validation.max_p95_latency_ms 50" in f for f in failures)


def test_overlap_gate_applies_only_to_query_sets_without_labels() -> None:
    def arm(mrr: float | None, labelled: int) -> ArmSummary:
        return ArmSummary(10, 0, 0.0, labelled, mrr, mrr, mrr, 10, 1.0, 2.0, 5.0, 6.0, 4.0)

    gates = ValidationConfig(min_overlap_at_k=0.5, max_mrr_drop=0.05)
    assert check_gates(arm(None, 0), arm(None, 0), 0.2, gates) == [
        "overlap@10 with legacy results is 0.200 < validation.min_overlap_at_k 0.5"
    ]
    # Labelled: a different but better result list passes.
    assert check_gates(arm(0.6, 10), arm(0.7, 10), 0.2, gates) == []


def test_query_set_ids_are_text_and_bad_lines_are_named(tmp_path: Path) -> None:
    p = tmp_path / "q.jsonl"
    p.write_text('{"query": "sort a list", "relevant_ids": [12, 7]}\n\n{"query": "open a file"}\n')
    qs = load_queries(p)
    assert qs == [Query("sort a list", frozenset({"12", "7"})), Query("open a file", frozenset())]
    p.write_text('{"query": "ok", "relevant_ids": [1]}\n{"text": "wrong key"}\n')
    with pytest.raises(ConfigError) as e:
        load_queries(p)
    assert "line 2" in str(e.value)
    with pytest.raises(ConfigError, match="file not found"):
        load_queries(tmp_path / "missing.jsonl")


# ------------------------------------------------------------------------------------------------------------
# The validator on a real table
# ------------------------------------------------------------------------------------------------------------
def test_validator_passes_the_quantized_model_and_stores_its_report(migrated: Migrated) -> None:  # noqa: F811
    from agents.validator import Validator

    report = Validator("validator-t", migrated.cfg.to_payload(migrated.dsn)).validate(migrated.mid)
    assert report["failures"] == []
    assert report["partial"] is False
    assert report["queries"] == report["labelled"] == 30
    lg, nw = report["legacy"], report["new"]
    # Q8_0 of the same model: the same answers, up to quantization noise.
    assert lg["mrr_at_10"] > 0.5
    assert abs(lg["mrr_at_10"] - nw["mrr_at_10"]) <= 0.05
    assert report["overlap_at_k"] > 0.8
    assert nw["errors"] == 0 and nw["search_p95_ms"] > 0
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        stored = c.execute(
            "SELECT detail FROM swarm.events WHERE kind = 'validation' AND migration_id = %s ORDER BY id DESC LIMIT 1",
            [migrated.mid],
        ).fetchone()[0]
    assert stored["new"]["mrr_at_10"] == nw["mrr_at_10"] and stored["validator"] == "validator-t"


def test_validation_during_the_backfill_compares_only_migrated_rows(migrated: Migrated) -> None:  # noqa: F811
    from agents.validator import Validator

    m = migrated.migration()
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        # Half the table has no new vector yet, as in the middle of a backfill.
        c.execute(f'UPDATE documents SET "{m.target.new_column}" = NULL WHERE id % 2 = 0')
        migrated_ids = {
            r[0]
            for r in c.execute(f'SELECT id::text FROM documents WHERE "{m.target.new_column}" IS NOT NULL').fetchall()
        }
    labelled = [q for q in load_queries(migrated.queries_file)]
    judgeable = [q for q in labelled if q.relevant <= migrated_ids]
    report = Validator("validator-p", migrated.cfg.to_payload(migrated.dsn)).validate(migrated.mid)
    assert report["partial"] is True
    assert report["rows_with_new_vector"] == len(migrated_ids) and report["rows_total"] == 60
    assert report["queries"] == len(judgeable) < len(labelled)
    assert report["failures"] == []
    assert abs(report["legacy"]["mrr_at_10"] - report["new"]["mrr_at_10"]) <= 0.05


# ------------------------------------------------------------------------------------------------------------
# assess
# ------------------------------------------------------------------------------------------------------------
def test_assess_measures_the_table_and_changes_nothing(migrated: Migrated, tmp_path: Path) -> None:  # noqa: F811
    from swarm import migration as mig
    from swarm.ops.assess import assess, render

    def snapshot() -> tuple[object, ...]:
        with psycopg.connect(migrated.dsn, autocommit=True) as c:
            tables = c.execute("SELECT count(*) FROM pg_class WHERE relkind IN ('r', 'i')").fetchone()[0]
            events = c.execute("SELECT count(*) FROM swarm.events").fetchone()[0]
            return tables, events, mig.legacy_checksum(c, migrated.migration().target)

    before = snapshot()
    a = assess(migrated.cfg, sample_rows=16, out_dir=tmp_path / "reports")
    assert snapshot() == before
    assert a["rows"] == 60
    assert a["legacy_column"]["type"] == "vector" and a["legacy_column"]["dimension"] == 384
    assert [ix["name"] for ix in a["legacy_column"]["indexes"]] == ["documents_embedding_idx"]
    assert a["sizes"]["table_bytes"] > 0 and a["sizes"]["index_bytes"] > 0
    tok = a["tokens"]
    assert tok["rows_tokenized"] == 60 and 0 < tok["p50"] <= tok["p95"] <= tok["max"]
    from model.embedder import LlamaEmbedder

    with (
        LlamaEmbedder(migrated.cfg.embedding.model_path, cache_size=0) as e,
        psycopg.connect(migrated.dsn) as c,
    ):
        over = sum(len(e.tokenize(t)) > e.max_tokens for (t,) in c.execute("SELECT content FROM documents"))
    assert tok["rows_over_context"] == over
    tp = a["throughput"]
    assert tp["sample_rows"] == 16 and tp["rows_per_second_per_migrator"] > 0
    assert tp["estimated_seconds"] == pytest.approx(60 / tp["rows_per_second_swarm"], rel=0.01)
    search = a["legacy_column"]["search"]
    assert search["labelled"] == 30 and search["mrr_at_10"] > 0.5 and search["search_p95_ms"] > 0
    written = json.loads((tmp_path / "reports" / "assessment.json").read_text())
    assert written["rows"] == 60
    md = (tmp_path / "reports" / "assessment.md").read_text()
    assert "| rows | 60 |" in md and "legacy quality" in md
    assert "estimate" in render(a)
