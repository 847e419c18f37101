"""``pipeline_efficiency`` and ``migrator_rss_mb``: a whole migration against its embedder alone, and the
memory a migrator holds."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from bench.lab import Lab, create_docs_table, niceness, orchestrate_timed
from bench.results import Result, Target, ratio
from swarm.core.errors import SwarmError
from swarm.core.log import get_logger

if TYPE_CHECKING:
    from swarm.core.config import Config

log = get_logger()


def _plain_rows_per_second(cfg: Config, texts: list[str], warm: list[str]) -> tuple[float, dict[str, Any]]:
    """The migrators' embedding alone: as many plain processes as the swarm has migrators, each with a
    migrator's threads and its embedder (built from the same [embedding] options), embedding its share of
    ``texts`` in the migrator's batches. So the ratio is the swarm's own cost (database, shards, Ray, index),
    not a different split of the cores (two processes of one thread embed faster here than one of two)."""
    import tempfile
    from pathlib import Path

    from agents.actors import threads_per_migrator
    from bench.embed import spawn_workers, stop_workers, time_go, wait_ready

    e, sw = cfg.embedding, cfg.swarm
    procs = sw.migrators
    threads = threads_per_migrator(sw.threads_per_migrator, procs)
    options = {
        "cache_size": e.cache_size,
        "document_prefix": e.document_prefix,
        "query_prefix": e.query_prefix,
        "truncate_dim": e.truncate_dim,
        "expected_dim": e.dimension,
    }
    with tempfile.TemporaryDirectory(prefix="swarm-bench-pipeline-") as tmp:
        texts_file = Path(tmp) / "texts.json"
        texts_file.write_text(json.dumps({"texts": texts, "warm": warm}), encoding="utf-8")
        workers = spawn_workers(
            [
                {
                    "side": "llama",
                    "model": str(cfg.path(e.model_path)),
                    "threads": threads,
                    "batch_size": e.batch_size,
                    "flash_attn": e.flash_attn,
                    "texts_file": str(texts_file),
                    "shard": shard,
                    "nshards": procs,
                    "migrator": options,
                }
                for shard in range(procs)
            ]
        )
        try:
            wait_ready(workers, "the pipeline's baseline")
            seconds, cpu = time_go(workers, "the pipeline's baseline")
        finally:
            stop_workers(workers)
    return len(texts) / seconds, {
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "processes": procs,
        "threads": threads,
    }


def fig_pipeline(lab: Lab) -> list[Result]:
    from swarm import commands

    n = lab.sizes.pipeline_rows
    docs = lab.docs()
    if len(docs) < n + 32:
        raise SwarmError(f"the corpus has {len(docs)} documents; {n} needed")
    rows = [(d.id, d.content) for d in docs[:n]]
    dsn = lab.database("bench_pipeline")
    create_docs_table(dsn, "documents", rows)
    cfg = lab.config(dsn, "documents")
    load_before = os.getloadavg()
    texts, warm = [r[1] for r in rows], [d.content for d in docs[n : n + 32]]
    # The baseline runs before and after the swarm (A-B-A) and the ratio takes their mean: one run of each, one
    # after the other, measured this machine's drift as much as the swarm (baselines of 220 s and 252 s on the
    # same code, hours apart). Both runs are in the notes.
    before_rps, before = _plain_rows_per_second(cfg, texts, warm)
    lab.kill_swarm()
    run = orchestrate_timed(cfg, "bench: pipeline", before=lambda: commands.init(cfg))
    if run.code != 0 or run.rows != n:
        raise SwarmError(
            f"the migration ended with exit code {run.code}, {run.rows}/{n} rows: {run.status.get('reason')}"
        )
    assert run.to_finish_s is not None
    lab.shared["pipeline"] = {"infos": lab.migrator_infos(), "dsn": dsn, "cfg": cfg}
    nice = sorted({n for n in (niceness(i["pid"]) for i in lab.shared["pipeline"]["infos"]) if n is not None})
    lab.kill_swarm()
    after_rps, after = _plain_rows_per_second(cfg, texts, warm)
    base_rps = (before_rps + after_rps) / 2
    base = {
        "processes": before["processes"],
        "threads": before["threads"],
        "runs": [before, after],
        "rows_per_second": [round(before_rps, 2), round(after_rps, 2)],
    }
    swarm_rps = n / run.to_finish_s
    sw = cfg.swarm
    from agents.actors import threads_per_migrator

    threads = threads_per_migrator(sw.threads_per_migrator, sw.migrators)
    notes = (
        f"{n} demo rows (stdlib functions); swarm: {sw.migrators} migrators (nice {nice}, Ray's default; this "
        f"process nice {os.getpriority(os.PRIO_PROCESS, 0)}) × {threads} llama.cpp threads, "
        f"shard_rows {sw.shard_rows}, batch {cfg.embedding.batch_size}, {sw.index} index built, no validators; "
        f"baseline: the migrators' embedding alone ({base['processes']} plain processes x {base['threads']} "
        f"threads, each a migrator's embedder on its share of the rows in the same batches), run before and after "
        f"the swarm: {before_rps:.2f} and {after_rps:.2f} rows/s ({before['seconds']:.1f} s, "
        f"{after['seconds']:.1f} s), their mean; "
        f"swarm time = init → finished_at ({run.to_finish_s:.1f} s; backfill {run.phases.get('backfill', 0):.1f} s, "
        f"index {run.phases.get('index', 0):.1f} s)"
    )
    return [
        Result(
            "pipeline_efficiency",
            swarm_rps,
            "rows/s",
            Target(">=", 0.90, "ratio"),
            baseline=base_rps,
            baseline_label="plain embedders rows/s, same split",
            ratio=ratio(swarm_rps, base_rps),
            ratio_label="swarm / plain",
            notes=notes,
            details={
                "rows": n,
                "baseline": base,
                "swarm_seconds_to_finish": round(run.to_finish_s, 2),
                "orchestrate_wall_seconds": round(run.wall_s, 2),
                "phases": run.phases,
                "migrators": sw.migrators,
                "threads_per_migrator": threads,
                "shard_rows": sw.shard_rows,
                "migrator_niceness": nice,
                "batch_size": cfg.embedding.batch_size,
                "migrator_infos": lab.shared["pipeline"]["infos"],
                "load_before": load_before,
                "load_after": os.getloadavg(),
            },
        )
    ]


def fig_rss(lab: Lab) -> list[Result]:
    from swarm import commands

    shared = lab.shared.get("pipeline")
    if shared is None:
        n = lab.sizes.rss_rows
        dsn = lab.database("bench_rss")
        create_docs_table(dsn, "documents", [(d.id, d.content) for d in lab.docs()[:n]])
        cfg = lab.config(dsn, "documents")
        lab.kill_swarm()
        run = orchestrate_timed(cfg, "bench: rss", before=lambda: commands.init(cfg))
        if run.code != 0:
            raise SwarmError(f"the migration ended with exit code {run.code}: {run.status.get('reason')}")
        infos, source = lab.migrator_infos(), f"a {n}-row migration"
    else:
        dsn, cfg, infos = shared["dsn"], shared["cfg"], shared["infos"]
        source = "the pipeline figure's migration"
    # The baseline: the same actors doing the same shards of the same table without a model (a rehearsal).
    lab.kill_swarm()
    rehearsal = orchestrate_timed(cfg, "bench: rss baseline", rehearse=True, before=lambda: commands.init(cfg))
    if rehearsal.code != 0:
        raise SwarmError(f"the rehearsal ended with exit code {rehearsal.code}: {rehearsal.status.get('reason')}")
    bare = lab.migrator_infos()
    lab.kill_swarm()
    peak = max(i["peak_rss_mb"] for i in infos)
    bare_peak = max(i["peak_rss_mb"] for i in bare)
    model_mb = max(i["model_mb"] for i in infos)
    q8, _ = lab.models()
    notes = (
        f"max over {len(infos)} migrators after {source}; model's share: {model_mb:.0f} MB at load (RSS before/"
        f"after LlamaEmbedder), {peak - bare_peak:.0f} MB over a rehearsal migrator's peak "
        f"(GGUF file {q8.stat().st_size / 2**20:.0f} MB)"
    )
    return [
        Result(
            "migrator_rss_mb",
            peak,
            "MB",
            Target("<=", 400),
            baseline=bare_peak,
            baseline_label="rehearsal migrator (no model) peak MB",
            ratio=ratio(peak, bare_peak),
            notes=notes,
            details={
                "migrators": infos,
                "rehearsal_migrators": bare,
                "model_mb_at_load": model_mb,
                "model_share_over_rehearsal_mb": round(peak - bare_peak, 1),
                "gguf_mb": round(q8.stat().st_size / 2**20, 1),
            },
        )
    ]
