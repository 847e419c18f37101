"""The benchmark (bench/): how figures are judged, tabulated and written, and one cheap figure run for real
(``--quick``).

No timing is asserted here: the figures' values depend on the machine; the bench itself reports them against
baselines measured in the same run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bench import results as bench_results
from bench import search as bench_search
from bench import vecshift as bench_vecshift
from bench.results import Result, Target
from bench.run import run as bench_run
from bench.run import system_features
from swarm.core.config import load_config
from swarm.core.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
MACHINE = {
    "cores": 2,
    "cpu_model": "AMD EPYC 7B13",
    "memory_gb": 23.5,
    "system": "Linux",
    "python": "3.11.7",
    "llama_cpp": "0.3.36",
    "llama_cpp_commit": "0c1e570",
    "ggml": "0.25.3",
    "llama_cpp_system": "CPU: SSE3 AVX2 FMA",
    "torch": "2.14.1",
    "sentence_transformers": "6.2.0",
    "ray": "2.60.0",
    "date": "2026-11-26",
    "loadavg_start": [1.0, 0.5, 0.25],
}


def test_targets_judge_the_value_or_the_ratio() -> None:
    at_least = Target(">=", 1.5, "ratio")
    assert at_least.check(value=10.0, ratio=1.5) is True
    assert at_least.check(value=99.0, ratio=1.49) is False  # the value does not matter, the ratio does
    assert Target("<=", 400).check(value=400.0, ratio=None) is True
    assert Target("<=", 400).check(value=401.0, ratio=0.5) is False
    within = Target("within", 0.25, "ratio")
    assert [within.check(None, r) for r in (0.75, 1.0, 1.25, 0.74, 1.26)] == [True, True, True, False, False]
    assert Target(">=", 0.9).check(value=None, ratio=None) is None
    assert str(within) == "ratio within 1 ± 0.25" and str(Target(">=", 0.95)) == "value >= 0.95"


def test_ratio_percentile_and_recall() -> None:
    assert bench_results.ratio(3.0, 2.0) == 1.5
    assert bench_results.ratio(3.0, 0.0) is None and bench_results.ratio(None, 2.0) is None
    assert bench_results.percentile(list(range(1, 101)), 95) == pytest.approx(95.05)
    assert bench_results.mean_recall([[1, 2, 3], [4, 5, 9]], [[3, 2, 1], [4, 5, 6]], k=3) == pytest.approx(
        (1 + 2 / 3) / 2
    )
    with pytest.raises(ValueError):
        bench_results.mean_recall([[1]], [[1], [2]], k=1)


def test_a_result_passes_misses_or_errors() -> None:
    ok = Result(
        "pipeline_efficiency",
        95.0,
        "rows/s",
        Target(">=", 0.9, "ratio"),
        baseline=100.0,
        ratio=bench_results.ratio(95.0, 100.0),
    )
    slow = Result(
        "pipeline_efficiency",
        80.0,
        "rows/s",
        Target(">=", 0.9, "ratio"),
        baseline=100.0,
        ratio=bench_results.ratio(80.0, 100.0),
    )
    broken = Result("cache_hit_rate", None, "", Target(">=", 0.9), error="SwarmError: the migration failed")
    assert (ok.verdict, slow.verdict, broken.verdict) == ("pass", "miss", "error")
    assert (ok.passed, slow.passed, broken.passed) == (True, False, None)
    d = slow.as_dict()
    assert d["verdict"] == "miss" and d["target"] == "ratio >= 0.9" and d["ratio"] == pytest.approx(0.8)


def test_figure_selection_takes_names_and_aliases_in_bench_order() -> None:
    assert bench_results.select_figures(None) == list(bench_results.FIGURES)
    assert bench_results.select_figures(["search_recall_at_10", "embed", "search_p95_ms"]) == ["embed", "search"]
    assert bench_results.select_figures(["overhead_per_row_us", "cache"]) == ["cache", "overhead"]
    assert bench_results.select_figures(["migration_ratio_vs_vecshift"]) == ["vecshift"]
    with pytest.raises(UsageError, match="no such figure"):
        bench_results.select_figures(["embedding"])


def test_table_and_files_show_every_figure_its_target_and_the_machine(tmp_path: Path) -> None:
    results = [
        Result(
            "embed_ratio_vs_sentence_transformers",
            5200.0,
            "tokens/s",
            Target(">=", 1.5, "ratio"),
            baseline=3100.0,
            baseline_label="sentence-transformers tokens/s",
            ratio=5200 / 3100,
            ratio_label="llama.cpp / sentence-transformers",
            notes="300 texts | 2 threads",
        ),
        Result("migrator_rss_mb", 412.0, "MB", Target("<=", 400), baseline=230.0, ratio=412 / 230),
        Result("cache_hit_rate", None, "", Target(">=", 0.9), error="SwarmError: boom"),
    ]
    md = bench_results.render_markdown(results, MACHINE, quick=False, seconds=600)
    assert "2 cores, AMD EPYC 7B13" in md
    rows = [line for line in md.splitlines() if line.startswith("| ") and "figure" not in line]
    assert len(rows) == 3
    assert "5,200 tokens/s" in rows[0] and "1.68" in rows[0] and "| pass |" in rows[0]
    assert "300 texts \\| 2 threads" in rows[0]  # a pipe in the notes does not break the table
    assert "412.0 MB" in rows[1] and "| 230.0 |" in rows[1] and "**miss**" in rows[1] and "value <= 400" in rows[1]
    assert "**error**" in rows[2] and "boom" in rows[2]

    json_path, md_path = bench_results.write_results(
        tmp_path, results, MACHINE, quick=True, seconds=12.0, figures=["embed", "rss", "cache"]
    )
    data = json.loads(json_path.read_text())
    assert data["quick"] is True and data["machine"]["cores"] == 2
    assert [(r["figure"], r["verdict"]) for r in data["results"]] == [
        ("embed_ratio_vs_sentence_transformers", "pass"),
        ("migrator_rss_mb", "miss"),
        ("cache_hit_rate", "error"),
    ]
    assert md_path.read_text().startswith("# swarm bench (quick")


def test_exact_top_k_is_brute_force_cosine() -> None:
    rng = np.random.default_rng(0)
    data = bench_search.EmbeddingLike(rng, topics=20).sample(rng, 300)
    queries = data[:5] + 0.01
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ids = np.arange(100, 400)
    got = bench_search.exact_top_k(data, queries, 10, ids)
    for q, row in zip(queries, got, strict=True):
        want = ids[np.argsort(-(data @ q))[:10]]
        assert row == [int(i) for i in want]
    assert [row[0] for row in got] == [100, 101, 102, 103, 104]  # each query's own row comes first


def test_synthetic_vectors_have_the_neighbourhoods_of_real_minilm_embeddings() -> None:
    """The search figure's vectors: unit length, nearest / 10th-nearest cosine ~0.67 / ~0.51 as measured on
    real all-MiniLM-L6-v2 embeddings of 1,500 stdlib functions, random pairs ~0.23."""
    rng = np.random.default_rng(1)
    x = bench_search.EmbeddingLike(rng, topics=150).sample(rng, 1500)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    sims = x @ x.T
    np.fill_diagonal(sims, -1.0)
    ranked = np.sort(sims, axis=1)[:, ::-1]
    assert 0.62 < float(np.median(ranked[:, 0])) < 0.72
    assert 0.46 < float(np.median(ranked[:, 9])) < 0.56
    assert 0.18 < float(np.median(sims[np.triu_indices(1500, 1)])) < 0.30


def test_quick_search_figure_runs_on_the_real_parts_and_cleans_up(tmp_path: Path) -> None:
    """``bench --quick --only search``: a scratch embedded PostgreSQL, swarm's index and search SQL."""
    before = set(Path("/tmp").glob("swarm-bench-*"))
    cfg = load_config(REPO / "configs" / "demo.toml")
    code = bench_run(cfg, only=["search"], quick=True, out_dir=tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    by_name = {r["figure"]: r for r in data["results"]}
    assert set(by_name) == {"search_p95_ms", "search_recall_at_10"}
    p95, recall = by_name["search_p95_ms"], by_name["search_recall_at_10"]
    assert p95["error"] is None and recall["error"] is None
    assert 0 < p95["value"] and 0 < p95["baseline"]  # index and exact search both timed
    # Recall's baseline is exact search (1.0 by definition); ivfflat at probes 1 (swarm before #5) is history.
    assert recall["baseline"] == 1.0 and recall["ratio"] == recall["value"]
    assert 0.0 <= recall["details"]["before_ivfflat_probes_1"]["recall_at_10"] <= recall["value"] <= 1.0
    assert p95["notes"].startswith("synthetic vectors") and recall["notes"].startswith("synthetic vectors")
    # The headline is the swarm's own configuration: its index, built with its parameters, and its ef_search.
    configured, builds = p95["details"]["configured"], p95["details"]["builds"]
    assert configured["index"] == cfg.swarm.index == "hnsw" and configured["value"] == cfg.swarm.ef_search
    hnsw = cfg.swarm.hnsw_m, cfg.swarm.hnsw_ef_construction
    assert (builds["hnsw"]["m"], builds["hnsw"]["ef_construction"]) == hnsw
    assert (p95["value"], recall["value"]) == (configured["p95_ms"], configured["recall_at_10"])
    assert p95["details"]["exact_recall_vs_numpy"] == pytest.approx(1.0)  # the ground truth agrees with PostgreSQL
    assert builds["ivfflat"]["uses_index"] and builds["hnsw"]["uses_index"]
    assert code == (0 if p95["passed"] and recall["passed"] else 1)
    assert not math.isnan(p95["value"])
    assert "search_p95_ms" in (tmp_path / "results.md").read_text()
    # The scratch server and its data are gone: nothing new is left (another bench running beside this test may
    # remove its own scratch directory meanwhile, so this is not an equality).
    assert not set(Path("/tmp").glob("swarm-bench-*")) - before


def test_an_only_run_keeps_the_other_figures_of_the_last_run(tmp_path: Path) -> None:
    machine = {"cores": 2, "date": "2026-11-26 03:00 UTC"}
    old = [
        Result("pipeline_efficiency", 1.0, "", Target(">=", 0.9, "ratio"), ratio=1.04, notes="5000 rows"),
        Result("search_p95_ms", 17.4, "ms", Target("<=", 10)),
        Result("search_recall_at_10", 0.95, "", Target(">=", 0.95)),
    ]
    bench_results.write_results(tmp_path, old, machine, quick=False, seconds=60, figures=["pipeline", "search"])
    kept = bench_results.previous_results(tmp_path, quick=False, rerun=["search"])
    assert [r.figure for r in kept] == ["pipeline_efficiency"]
    assert kept[0].passed and kept[0].notes == "5000 rows" and kept[0].measured == "2026-11-26 03:00 UTC"
    assert bench_results.previous_results(tmp_path, quick=True, rerun=["search"]) == []  # a quick run never mixes in
    assert bench_results.previous_results(tmp_path / "none", quick=False, rerun=[]) == []


def test_the_peer_server_embeds_whole_texts_on_the_swarms_threads() -> None:
    """llama_cpp.server for the vecshift figure: embedding mode, both thread counts (embedding is a batch
    decode; n_threads_batch would default to every core), and one token limit for n_ctx, n_batch and n_ubatch
    (Llama.embed silently cuts a text to n_batch tokens; Llama clamps n_batch to n_ctx)."""
    cmd = bench_vecshift.server_command(
        "/venv/bin/python", Path("/m/minilm.gguf"), port=8089, threads=2, max_tokens=512, flash_attn=True
    )
    assert cmd[:3] == ["/venv/bin/python", "-m", "llama_cpp.server"]
    flags = dict(zip(cmd[3::2], cmd[4::2], strict=True))
    assert flags["--model"] == "/m/minilm.gguf" and flags["--embedding"] == "true"
    assert (flags["--host"], flags["--port"]) == ("127.0.0.1", "8089")
    assert flags["--n_threads"] == flags["--n_threads_batch"] == "2"
    assert flags["--n_ctx"] == flags["--n_batch"] == flags["--n_ubatch"] == "512"
    assert flags["--flash_attn"] == "true" and flags["--model_alias"] == bench_vecshift.MODEL_NAME


def test_the_vecshift_job_file_is_one_vecshift_accepts(tmp_path: Path) -> None:
    """The job written for ``vecshift apply``: JSON read by vecshift's own loader (a strict schema), the model's
    width known without calling it, no price, the request size the figure chose."""
    spec = pytest.importorskip("vecshift.jobs.spec")
    models = pytest.importorskip("vecshift.embeddings.spec")
    doc = bench_vecshift.job_document(name="bench", table="documents", url="http://127.0.0.1:8089/v1")
    path = tmp_path / "vecshift.yaml"
    path.write_text(json.dumps(doc))
    job = spec.load_job(path)
    src = job.pg_source
    assert (src.table, src.vector_column, src.text_column, src.dsn_env) == (
        "documents",
        "embedding",
        "content",
        "VECSHIFT_DSN",
    )
    assert (job.target.column, str(job.target.index), str(job.target.metric)) == ("embedding_v2", "hnsw", "cosine")
    model = models.parse_spec(job.model)
    assert model.url == "http://127.0.0.1:8089/v1" and model.price == 0
    assert model.output_dimensions == 384 and model.dimensions is None  # known: no plan --probe, no dimensions=
    assert model.batch_size == bench_vecshift.REQUEST_TEXTS
    with pytest.raises(ValueError, match="commas"):
        bench_vecshift.model_spec("http://h/v1?a=1,2")


def test_vecshift_apply_events_give_its_status_rows_and_phase_times() -> None:
    """``vecshift apply --json`` as it printed it (a 1000-row run), stamped on arrival; stray lines ignored."""
    out = [
        (8.826, '{"event": "column", "added": true}\n'),
        (8.857, '{"event": "trigger", "added": true}\n'),
        (8.920, '{"event": "start", "pending": 1000, "spent_before": 0.0}\n'),
        (9.0, "Warning: something on stdout\n"),
        (9.1, "{not json\n"),
        (629.767, '{"event": "batch", "pass": 1, "written": 256, "rows_written": 256}\n'),
        (1580.273, '{"event": "batch", "pass": 1, "written": 256, "rows_written": 512}\n'),
        (2125.836, '{"event": "batch", "pass": 1, "written": 488, "rows_written": 1000}\n'),
        (2125.864, '{"event": "pass", "number": 1, "remaining": 0}\n'),
        (2125.865, '{"event": "index", "state": "building", "method": "hnsw"}\n'),
        (2127.589, '{"event": "index", "state": "built"}\n'),
        (2127.612, '{"event": "done", "status": "complete"}\n'),
        (
            2127.626,
            '{"event": "result", "status": "complete", "rows_written": 1000, "rows_failed": 0, "remaining": 0, '
            '"tokens": 196604, "seconds": 2118.8, "index": "built", "message": "Every row with text has a new '
            'vector."}\n',
        ),
    ]
    events = bench_vecshift.parse_events(out)
    assert len(events) == 11 and events[0] == {"event": "column", "added": True, "_t": 8.826}
    got = bench_vecshift.summarize_apply(events)
    assert (got["status"], got["rows_written"], got["rows_failed"], got["remaining"]) == ("complete", 1000, 0, 0)
    assert (got["tokens"], got["index"], got["chunks"], got["passes"]) == (196604, "built", 3, 1)
    assert got["pending_at_start"] == 1000 and got["setup_s"] == 8.92
    assert got["backfill_s"] == pytest.approx(2125.864 - 8.92)
    assert got["index_s"] == pytest.approx(1.724)
    # Killed before its result: nothing to report as complete.
    cut = bench_vecshift.summarize_apply(events[:5])
    assert (cut["status"], cut["rows_written"], cut["index_s"]) == (None, 0, None)


def test_kept_figures_keep_their_first_date_and_never_count_in_the_exit_code(tmp_path: Path) -> None:
    """``--only search`` after a full run: the pipeline figure stays in the table, dated, pass or miss alike, and
    the exit code is this run's alone."""
    first = [
        Result("pipeline_efficiency", 80.0, "rows/s", Target(">=", 0.9, "ratio"), ratio=0.8),
        Result("migrator_rss_mb", 300.0, "MB", Target("<=", 400)),
        Result("search_p95_ms", 17.4, "ms", Target("<=", 10)),
    ]
    machine = {"cores": 2, "date": "2026-11-26 03:00 UTC"}
    bench_results.write_results(tmp_path, first, machine, quick=False, seconds=60, figures=["pipeline", "search"])
    kept = bench_results.previous_results(tmp_path, quick=False, rerun=["search"])
    fast = Result("search_p95_ms", 8.0, "ms", Target("<=", 10))
    assert [r.figure for r in kept] == ["pipeline_efficiency", "migrator_rss_mb"] and not kept[0].passed
    assert bench_results.exit_code([*kept, fast]) == 0  # the kept miss does not fail this run
    assert bench_results.exit_code([*kept, Result("search_p95_ms", 12.0, "ms", Target("<=", 10))]) == 1
    assert bench_results.exit_code(kept) == 1  # nothing measured by this run
    assert bench_results.exit_code([fast, Result("load_errors", None, "", Target("<=", 0), error="boom")]) == 1

    # A second --only run: the kept figures keep the date of the run that measured them, not the last run's.
    later = {"cores": 2, "date": "2026-11-27 09:00 UTC"}
    bench_results.write_results(tmp_path, [*kept, fast], later, quick=False, seconds=60, figures=["search"])
    again = bench_results.previous_results(tmp_path, quick=False, rerun=["rss"])
    assert {r.figure: r.measured for r in again} == {
        "pipeline_efficiency": "2026-11-26 03:00 UTC",
        "search_p95_ms": "2026-11-27 09:00 UTC",
    }


def test_the_table_dates_kept_figures_and_shows_each_figures_load_and_the_versions() -> None:
    new = Result("search_p95_ms", 8.0, "ms", Target("<=", 10), notes="200 queries")
    new.details.update(loadavg_start=[1.5, 1.0, 0.5], loadavg_after=[3.25, 2.0, 1.0])
    kept = Result("pipeline_efficiency", 80.0, "rows/s", Target(">=", 0.9, "ratio"), ratio=0.8, notes="5000 rows")
    kept.measured = "2026-11-26 03:00 UTC"
    kept.details.update(loadavg_after=[4.0, 3.0, 2.0])  # measured before the start was recorded
    machine = {**MACHINE, "host": "bench-1", "postgres": "16.14", "pgvector": "0.8.5"}
    md = bench_results.render_markdown([kept, new], machine, quick=False, seconds=60)
    assert "Machine: bench-1, 2 cores, AMD EPYC 7B13" in md
    assert (
        "Versions: Python 3.11.7, llama-cpp-python 0.3.36 (llama.cpp 0c1e570, ggml 0.25.3, CPU: SSE3 AVX2 FMA), "
        "torch 2.14.1, sentence-transformers 6.2.0, Ray 2.60.0, PostgreSQL 16.14 + pgvector 0.8.5." in md
    )
    assert "not counted in this run's exit code" in md
    rows = [line for line in md.splitlines() if line.startswith("| ") and "figure" not in line]
    assert "**miss** (*measured 2026-11-26 03:00 UTC*, not counted)" in rows[0] and "| - → 4.00 |" in rows[0]
    assert "| pass | 1.50 → 3.25 | 200 queries |" in rows[1] and "measured" not in rows[1]
    only_new = bench_results.render_markdown([new], MACHINE, quick=False, seconds=60)
    assert "not counted" not in only_new and "Machine: -, 2 cores" in only_new  # no host recorded: a dash


def test_system_features_lists_what_llama_cpp_was_built_with() -> None:
    info = "CPU : SSE3 = 1 | AVX = 1 | AVX512 = 0 | LLAMAFILE = 1 | OPENMP = 1 | "
    assert system_features(info) == "CPU: SSE3 AVX LLAMAFILE OPENMP"
    assert system_features("") == ""


def test_a_quick_run_fails_on_an_error_only() -> None:
    """``--quick`` sizes cannot judge a target: its exit code says whether every figure was measured."""
    met = Result("search_recall_at_10", 0.99, "", Target(">=", 0.95))
    missed = Result("pipeline_efficiency", 50.0, "rows/s", Target(">=", 0.9, "ratio"), ratio=0.6)
    broken = Result("cache_hit_rate", None, "", Target(">=", 0.95, "ratio"), error="SwarmError: boom")
    assert bench_results.exit_code([met, missed], quick=True) == 0
    assert bench_results.exit_code([met, missed]) == 1
    assert bench_results.exit_code([met, broken], quick=True) == 1
    assert bench_results.exit_code([], quick=True) == 1
