"""Search-quality metrics and gates, the validator on a real migrated table, and ``assess``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import psycopg
import pytest

from swarm.core.config import ValidationConfig
from swarm.core.errors import ConfigError
from swarm.quality import (
    Hit,
    Query,
    evaluate,
    ks_statistic,
    load_queries,
    mean_overlap,
    mrr_at_k,
    ndcg_at_k,
    overlap_at_k,
    paired_bootstrap,
    percentile,
    recall_at_k,
    summarize,
)
from tests.test_router import Migrated, migrated, quality_root, write_config  # noqa: F401  (fixtures)


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


def test_summary_counts_errors_apart() -> None:
    queries = [Query("a", frozenset({"1"})), Query("b", frozenset({"2"})), Query("c", frozenset({"3"}))]
    legacy = [Hit(["1", "9"], 5, 1), Hit(["2"], 5, 2), Hit(["3"], 5, 3)]
    new = [Hit(["9", "1"], 5, 1), Hit(["8"], 5, 90), Hit(error="OperationalError: gone")]
    lg, nw = summarize(queries, legacy, 10), summarize(queries, new, 10)
    assert lg.mrr_at_10 == 1.0 and lg.errors == 0
    assert nw.errors == 1 and nw.error_rate == pytest.approx(1 / 3)
    assert nw.mrr_at_10 == pytest.approx((0.5 + 0) / 2)  # the failed query is an error, not a zero
    assert mean_overlap(legacy, new, 10) == pytest.approx((1.0 + 0.0) / 2)


def test_the_paired_bootstrap_is_seeded_and_pairs_the_queries() -> None:
    rng = np.random.default_rng(0)
    hard = rng.uniform(0, 1, 200)  # per-query difficulty, shared by both arms
    legacy, new = hard + 0.10, hard + 0.08
    a = paired_bootstrap(legacy, new, seed=[7, 1])
    # Pairing cancels the difficulty: the difference is 0.02 on every query, and so is the whole interval.
    assert a.mean == pytest.approx(0.02) and a.lo == pytest.approx(0.02) and a.hi == pytest.approx(0.02)
    jitter = rng.normal(0, 0.1, 200)
    noisy = paired_bootstrap(legacy + jitter, new, seed=[7, 1])
    assert noisy == paired_bootstrap(legacy + jitter, new, seed=[7, 1])  # deterministic for a seed
    assert noisy != paired_bootstrap(legacy + jitter, new, seed=[7, 2])
    assert noisy.lo < noisy.mean < noisy.hi and noisy.n == 200
    # About 95% wide: 1.96 standard errors of the mean difference on each side.
    se = float(np.std(legacy + jitter - new) / np.sqrt(200))
    assert noisy.hi - noisy.lo == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert ks_statistic([0.1, 0.2, 0.3], [0.1, 0.2, 0.3]) == 0.0
    assert ks_statistic([0.1, 0.2], [0.8, 0.9]) == 1.0


def _hits(ranks: dict[str, list[int | None]], relevant: list[str], *, errors: dict[str, set[int]] | None = None):
    """Results where query i finds its answer at ``ranks[arm][i]`` (None: not in the top 10), ANN == exact."""
    out: dict[str, list[Hit]] = {}
    for arm, rs in ranks.items():
        for mode in ("exact", "ann"):
            hs = []
            for i, (r, rel) in enumerate(zip(rs, relevant, strict=True)):
                if i in (errors or {}).get(arm, set()):
                    hs.append(Hit(error="UndefinedColumn: column gone"))
                    continue
                ids = [f"x{i}-{j}" for j in range(10)]
                if r is not None:
                    ids[r - 1] = rel
                hs.append(Hit(ids, 1.0, 1.0, distances=[0.2 + 0.01 * j for j in range(10)]))
            out[f"{arm}_{mode}"] = hs
    return out


def _labelled(n: int, slices: dict[int, str] | None = None) -> list[Query]:
    return [Query(f"q{i}", frozenset({f"r{i}"}), (slices or {}).get(i)) for i in range(n)]


def test_the_verdict_comes_from_the_interval_not_the_point_estimate() -> None:
    gates = ValidationConfig(max_mrr_drop=0.05, min_queries=30)
    qs = _labelled(60)
    rel = [f"r{i}" for i in range(60)]
    same = evaluate(qs, _hits({"legacy": [1] * 60, "new": [1] * 60}, rel), gates, seed=[1, 1], final=False)
    assert same["verdict"] == "PASS" and same["mrr_drop_ci"] == [0.0, 0.0] and same["failures"] == []

    useless = evaluate(qs, _hits({"legacy": [1] * 60, "new": [None] * 60}, rel), gates, seed=[1, 1], final=False)
    assert useless["verdict"] == "FAIL"
    assert useless["failures"][0].startswith("MRR@10 dropped by 1.000 (95% CI 1.000 to 1.000; legacy 1.000, new 0.000")
    assert "> validation.max_mrr_drop 0.05" in useless["failures"][0]

    # 4 of 60 queries lose their answer: a mean drop of 0.067 over the limit, but the interval reaches below it.
    ranks = [1] * 60
    for i in (3, 17, 33, 50):
        ranks[i] = None
    noisy = evaluate(qs, _hits({"legacy": [1] * 60, "new": ranks}, rel), gates, seed=[1, 1], final=False)
    assert noisy["mrr_drop"] == pytest.approx(4 / 60, abs=1e-4)
    lo, hi = noisy["mrr_drop_ci"]
    assert lo < 0.05 < hi
    assert noisy["verdict"] == "INCONCLUSIVE" and "straddles validation.max_mrr_drop" in noisy["failures"][0]


def test_too_few_judged_queries_or_a_failing_legacy_arm_are_inconclusive_never_a_pass() -> None:
    gates = ValidationConfig(min_queries=30)
    qs = _labelled(20)
    rel = [f"r{i}" for i in range(20)]
    few = evaluate(qs, _hits({"legacy": [1] * 20, "new": [1] * 20}, rel), gates, seed=[1, 1], final=True)
    assert few["verdict"] == "INCONCLUSIVE"
    assert few["failures"] == ["only 20 of 20 queries could be judged (validation.min_queries 30)"]

    qs, rel = _labelled(40), [f"r{i}" for i in range(40)]
    broken = _hits({"legacy": [1] * 40, "new": [1] * 40}, rel, errors={"legacy": set(range(40))})
    r = evaluate(qs, broken, gates, seed=[1, 1], final=True)
    assert r["verdict"] == "INCONCLUSIVE" and r["judged"] == 0
    assert any(
        f.startswith("the legacy arm failed 40 of 40 queries (first error: UndefinedColumn") for f in r["failures"]
    )
    # One legacy error in 40 is above max_error_rate 0.1%: the round does not pass on the 39 others either.
    once = _hits({"legacy": [1] * 40, "new": [1] * 40}, rel, errors={"legacy": {5}})
    assert evaluate(qs, once, gates, seed=[1, 1], final=True)["verdict"] == "INCONCLUSIVE"
    # No query at all (nothing migrated yet that answers one).
    empty = evaluate(
        [], {f"{a}_{m}": [] for a in ("legacy", "new") for m in ("exact", "ann")}, gates, seed=[1, 1], final=False
    )
    assert empty["verdict"] == "INCONCLUSIVE"


def test_the_new_arms_errors_and_latency_fail_only_the_final_round() -> None:
    gates = ValidationConfig(min_queries=10, max_p95_latency_ms=50)
    qs, rel = _labelled(40), [f"r{i}" for i in range(40)]
    hits = _hits({"legacy": [1] * 40, "new": [1] * 40}, rel, errors={"new": {0, 1}})
    for h in hits["new_ann"]:
        h.search_ms = 90.0
    final = evaluate(qs, hits, gates, seed=[1, 1], final=True)
    assert final["verdict"] == "FAIL"
    assert any("error rate on the new column is 5.00% (2/40" in f for f in final["failures"])
    assert any(
        "p95 search latency on the new column is 90.0 ms > validation.max_p95_latency_ms 50" in f
        for f in final["failures"]
    )
    during = evaluate(qs, hits, gates, seed=[1, 1], final=False)
    assert during["verdict"] == "INCONCLUSIVE" and not any("latency" in f for f in during["failures"])


def test_a_regression_in_one_slice_fails_although_the_average_passes() -> None:
    gates = ValidationConfig(max_mrr_drop=0.05, min_queries=30)
    n = 430  # 400 queries in slice "python" unchanged, 30 in "shell" of which 12 lose their answer
    qs = _labelled(n, {i: "python" if i < 400 else "shell" for i in range(n)})
    rel = [f"r{i}" for i in range(n)]
    new = [1] * n
    for i in range(400, 412):
        new[i] = None
    r = evaluate(qs, _hits({"legacy": [1] * n, "new": new}, rel), gates, seed=[3, 1], final=True)
    assert r["mrr_drop_ci"][1] < 0.05  # the whole table's average says nothing is wrong ...
    assert r["verdict"] == "FAIL"  # ... one slice says otherwise
    assert r["failures"] == [f for f in r["failures"] if f.startswith("slice 'shell': MRR@10 dropped by 0.400")]
    assert "(97.5% CI " in r["failures"][0]  # two slices gated: each interval widened for the other
    assert r["slices"]["python"]["verdict"] == "PASS" and r["slices"]["shell"]["verdict"] == "FAIL"
    assert r["slices"]["shell"]["queries"] == 30 and r["slices"]["shell"]["new_mrr_at_10"] == pytest.approx(0.6)
    # A slice with fewer than min_queries judged queries is reported, not gated.
    small = evaluate(qs[390:], _hits({"legacy": [1] * 40, "new": new[390:]}, rel[390:]), gates, seed=[3, 1], final=True)
    assert small["slices"]["python"]["verdict"].startswith("not gated")


def test_a_backfill_round_leaves_an_undecided_slice_to_the_final_round_but_fails_on_a_clear_one() -> None:
    gates = ValidationConfig(max_mrr_drop=0.05, min_queries=30)
    n = 430  # 400 queries in "python" unchanged; in "shell" (30) one query loses its answer: noise-sized
    qs = _labelled(n, {i: "python" if i < 400 else "shell" for i in range(n)})
    rel = [f"r{i}" for i in range(n)]
    new = [1] * n
    new[400] = None
    hits = _hits({"legacy": [1] * n, "new": new}, rel)
    during = evaluate(qs, hits, gates, seed=[3, 1], final=False)
    shell = during["slices"]["shell"]
    assert shell["interval"]["lo"] <= 0.05 < shell["interval"]["hi"]  # the slice's interval straddles the limit
    assert during["verdict"] == "PASS" and during["failures"] == [] and during["inconclusive"] == []
    assert shell["verdict"] == "INCONCLUSIVE (left to the final round)"
    assert len(during["undecided"]) == 1 and during["undecided"][0].startswith("slice 'shell': MRR@10 drop 0.033")
    final = evaluate(qs, hits, gates, seed=[3, 1], final=True)
    assert final["verdict"] == "INCONCLUSIVE" and final["slices"]["shell"]["verdict"] == "INCONCLUSIVE"
    assert final["undecided"] == []
    # A slice whose interval lies wholly above the limit stops the backfill at once.
    for i in range(400, 412):
        new[i] = None
    clear = evaluate(qs, _hits({"legacy": [1] * n, "new": new}, rel), gates, seed=[3, 1], final=False)
    assert clear["verdict"] == "FAIL" and clear["slices"]["shell"]["verdict"] == "FAIL"


def test_query_sets_without_labels_are_gated_on_overlap_with_its_interval() -> None:
    gates = ValidationConfig(min_overlap_at_k=0.5, min_queries=30)
    qs = [Query(f"q{i}") for i in range(40)]

    def arms(shared: int) -> dict[str, list[Hit]]:
        legacy = [Hit([f"{i}-{j}" for j in range(10)], distances=[0.1] * 10) for i in range(40)]
        new = [
            Hit([f"{i}-{j}" for j in range(shared)] + [f"n{j}" for j in range(10 - shared)], distances=[0.3] * 10)
            for i in range(40)
        ]
        return {"legacy_exact": legacy, "legacy_ann": legacy, "new_exact": new, "new_ann": new}

    assert evaluate(qs, arms(8), gates, seed=[1, 1], final=False)["verdict"] == "PASS"
    r = evaluate(qs, arms(2), gates, seed=[1, 1], final=False)
    assert r["verdict"] == "FAIL" and r["gate"] == "overlap_at_k"
    assert r["failures"] == [
        "overlap@10 with legacy results is 0.200 (95% CI 0.200 to 0.200, exact search, 40 queries) "
        "< validation.min_overlap_at_k 0.5"
    ]
    # The score distributions are reported: here the new model's top-1 similarity sits lower than legacy's.
    assert r["scores"]["ks"] == 1.0
    assert r["scores"]["top1_similarity"]["legacy"]["p50"] == pytest.approx(0.9)


def test_query_set_ids_are_text_and_bad_lines_are_named(tmp_path: Path) -> None:
    p = tmp_path / "q.jsonl"
    p.write_text('{"query": "sort a list", "relevant_ids": [12, 7], "slice": "short"}\n\n{"query": "open a file"}\n')
    qs = load_queries(p)
    assert qs == [Query("sort a list", frozenset({"12", "7"}), "short"), Query("open a file", frozenset())]
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
    assert report["verdict"] == "PASS" and report["failures"] == []
    assert report["partial"] is False and report["stage"] == "manual"
    assert report["queries"] == report["judged"] == report["labelled"] == 30
    lg, nw = report["legacy"], report["new"]
    # Q8_0 of the same model, both searched exactly: the same answers, up to quantization noise.
    assert lg["mrr_at_10"] > 0.5
    assert abs(lg["mrr_at_10"] - nw["mrr_at_10"]) <= 0.01
    lo, hi = report["mrr_drop_ci"]
    assert lo <= report["mrr_drop"] <= hi <= 0.05
    assert report["overlap_at_k"] > 0.8
    assert report["errors_by_arm"] == {"legacy": 0, "new": 0} and report["ann"]["new"]["search_p95_ms"] > 0
    assert report["settings"]["new"] == {"ef_search": 80, "probes": 10}
    assert report["settings"]["legacy"] == {"ef_search": 40, "probes": 1}  # the server's defaults
    assert [i["method"] for i in report["indexes"]["legacy"]] == ["ivfflat"]
    assert [i["method"] for i in report["indexes"]["new"]] == ["hnsw"]
    assert set(report["slices"]) == {"short", "medium", "long"}  # the demo slices by content length
    assert sum(sl["queries"] for sl in report["slices"].values()) == 30
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        stored = c.execute(
            "SELECT detail FROM swarm.events WHERE kind = 'validation' AND migration_id = %s ORDER BY id DESC LIMIT 1",
            [migrated.mid],
        ).fetchone()[0]
        stages = [
            r[0]
            for r in c.execute(
                "SELECT detail->>'stage' FROM swarm.events WHERE kind = 'validation' AND migration_id = %s ORDER BY id",
                [migrated.mid],
            ).fetchall()
        ]
    assert stored["new"]["mrr_at_10"] == nw["mrr_at_10"] and stored["validators"] == ["validator-t"]
    # The template's migration validated during its backfill and after it (stored rounds), then by hand here.
    assert stages[-2:] == ["final", "manual"] and "backfill" in stages


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
    assert 5 <= len(judgeable) < len(labelled)
    report = Validator("validator-p", migrated.cfg.to_payload(migrated.dsn)).validate(migrated.mid)
    assert report["partial"] is True
    assert report["rows_with_new_vector"] == len(migrated_ids) and report["rows_total"] == 60
    assert report["percent_embedded"] == pytest.approx(100 * len(migrated_ids) / 60, abs=0.01)
    assert report["queries"] == report["judged"] == len(judgeable)
    assert report["query_set"] == {"queries": 30, "judgeable": len(judgeable), "sampled": len(judgeable)}
    # Fewer judgeable queries than validation.min_queries (30): it cannot decide, and says so.
    assert report["verdict"] == "INCONCLUSIVE"
    assert f"only {len(judgeable)} of {len(judgeable)} queries could be judged" in report["failures"][0]
    cfg = write_config(
        migrated.root, migrated.dsn, validation={"queries": str(migrated.queries_file), "min_queries": 5}
    )
    report = Validator("validator-p", cfg.to_payload(migrated.dsn)).validate(migrated.mid)
    assert report["verdict"] == "PASS"
    assert abs(report["legacy"]["mrr_at_10"] - report["new"]["mrr_at_10"]) <= 0.05
    # The like-with-like restriction holds for the ANN searches too: the restricted hnsw search still found
    # every exact answer (each of its searches scans ef_search candidates before the filter).
    assert report["index_recall"]["new"]["queries"] == len(judgeable)


def test_model_quality_is_measured_apart_from_index_recall(migrated: Migrated) -> None:  # noqa: F811
    """A legacy ivfflat index searched at the server's ``probes = 1`` loses recall; the exact figures, which
    the gates use, do not move with it, and ``[legacy].probes`` recovers it. EXPLAIN shows the exact search
    scans the table while the ANN one uses the index."""
    from pgvector.psycopg import register_vector

    from agents.validator import Validator
    from swarm.store.search import AnnSettings, run_search

    rng = np.random.default_rng(5)
    m = migrated.migration()
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        register_vector(c)
        # Enough rows for the planner to prefer the index, and many small lists so that one probe misses.
        c.execute("DROP INDEX documents_embedding_idx")
        with (
            c.cursor() as cur,
            cur.copy("COPY documents (id, content, embedding, nomic_embedding) FROM STDIN WITH (FORMAT BINARY)") as cp,
        ):
            cp.set_types(["bigint", "text", "vector", "vector"])
            for i in range(2000):
                v, w = rng.standard_normal((2, 384)).astype(np.float32)
                cp.write_row((1000 + i, f"filler {i}", v / np.linalg.norm(v), w / np.linalg.norm(w)))
        c.execute(
            "CREATE INDEX documents_embedding_idx ON documents USING ivfflat (embedding vector_cosine_ops) "
            "WITH (lists = 40)"
        )
        c.execute("ANALYZE documents")
        q = m.target.search("embedding", "vector", 384)
        vec = c.execute("SELECT embedding FROM documents WHERE id = 1").fetchone()[0]

        def plan(**kw: object) -> str:
            explain = psycopg.sql.SQL("EXPLAIN ") + q
            return "\n".join(r[0] for r in run_search(c, explain, vec, 10, **kw))  # type: ignore[arg-type]

        assert "Index Scan using documents_embedding_idx" in plan(ann=AnnSettings(40, 1))
        exact = plan(ann=None, exact=True)
        assert "Seq Scan on documents" in exact and "Index" not in exact
        c.execute("SET enable_seqscan = off")  # a session that discourages scans still searches exactly
        assert "Index" not in plan(ann=None, exact=True)
        c.execute("RESET enable_seqscan")

    default = Validator("validator-d", migrated.cfg.to_payload(migrated.dsn)).validate(migrated.mid)
    tuned = Validator("validator-e", migrated.config(legacy={"probes": 40}).to_payload(migrated.dsn)).validate(
        migrated.mid
    )
    assert default["settings"]["legacy"]["probes"] == 1 and tuned["settings"]["legacy"]["probes"] == 40
    # Model quality: exact search, the same whatever the legacy index's settings.
    assert default["legacy"]["mrr_at_10"] == tuned["legacy"]["mrr_at_10"]
    assert default["mrr_drop"] == tuned["mrr_drop"] and default["verdict"] == tuned["verdict"] == "PASS"
    # Index recall: one probe of 40 lists misses answers; all 40 find every one.
    lost = default["index_recall"]["legacy"]
    assert lost["recall"] < 0.9 and lost["lost"] == pytest.approx(1 - lost["recall"], abs=1e-4)
    assert lost["mrr_at_10_ann"] < lost["mrr_at_10_exact"] == default["legacy"]["mrr_at_10"]
    assert default["ann"]["legacy"]["mrr_at_10"] == lost["mrr_at_10_ann"]
    assert tuned["index_recall"]["legacy"]["recall"] == 1.0
    assert default["index_recall"]["new"]["recall"] >= 0.95  # hnsw at ef_search 80


def test_a_broken_legacy_arm_makes_validation_inconclusive_and_decommission_refuse(migrated: Migrated) -> None:  # noqa: F811
    from agents.validator import Validator
    from swarm.ops.decommission import refusals

    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        c.execute("ALTER TABLE documents RENAME COLUMN embedding TO embedding_gone")
    report = Validator("validator-b", migrated.cfg.to_payload(migrated.dsn)).validate(migrated.mid)
    assert report["verdict"] == "INCONCLUSIVE"  # not PASS: every gate that needs legacy is unknown
    assert report["judged"] == 0 and report["errors_by_arm"] == {"legacy": 30, "new": 0}
    assert any(f.startswith("the legacy arm failed 30 of 30 queries") and "embedding" in f for f in report["failures"])
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        c.execute("ALTER TABLE documents RENAME COLUMN embedding_gone TO embedding")
        c.execute("UPDATE swarm.migrations SET rollout_percent = 100 WHERE id = %s", [migrated.mid])
        why = refusals(c, migrated.cfg, migrated.migration())
    assert why and why[0].startswith("the last validation was INCONCLUSIVE: the legacy arm failed 30 of 30")


def test_status_the_report_and_validate_show_the_rounds(migrated: Migrated, tmp_path: Path) -> None:  # noqa: F811
    """The template's migration ran rounds during its backfill and a final one: ``status`` shows the last, the
    report draws quality against % migrated and states model quality and index recall apart."""
    from swarm import commands
    from swarm.ops import report as ops_report
    from swarm.ops.progress import render_status, render_validation

    st = commands.status(migrated.cfg)
    assert st["validation"]["stage"] == "final" and st["validation"]["verdict"] == "PASS"
    assert st["validation_rounds"] >= 2
    text = render_status(st)
    assert f"validated round {st['validation']['round']} (final, 100% embedded): PASS | MRR@10 legacy" in text

    paths = ops_report.write(migrated.cfg, migrated.db(), migrated.mid, out_dir=tmp_path / "reports")
    data = json.loads(Path(paths["json"]).read_text())
    stages = [r["stage"] for r in data["rounds"]]
    assert stages[-1] == "final" and "backfill" in stages
    assert all(r["verdict"] in ("PASS", "INCONCLUSIVE") for r in data["rounds"])
    backfill = [r for r in data["rounds"] if r["stage"] == "backfill"]
    assert all(0 < r["percent_embedded"] < 100 for r in backfill)
    md = Path(paths["markdown"]).read_text()
    assert "- **Model quality** (exact search on both arms): the new model is" in md
    assert "- **Index recall, legacy**: index ivfflat (lists=1), searched at ivfflat.probes 1: it returns" in md
    assert "- **Index recall, new**: index hnsw (m=16, ef_construction=200), searched at hnsw.ef_search 80" in md
    assert "**Score distributions** (top-1 cosine similarity, exact search)" in md and "KS statistic" in md
    assert "### Rounds" in md and "| backfill |" in md and "| final |" in md
    for chart in ("metrics", "rounds", "scores"):
        png = Path(paths[chart])
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"({png.name})" in md

    text = render_validation(data["validation"])
    assert "model quality (exact search)" in text and "index recall (ANN, each arm its own)" in text
    assert "all gates passed" in text


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
