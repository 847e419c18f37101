"""``cache_hit_rate``: a migration of a table whose rows repeat, with and without the shared cache.

The rate counts only what a cache saved: vectors taken from a migrator's LRU or the swarm's shared cache instead
of a model computation, over those plus the computations. Rows repeating an earlier row of their batch are
deduplicated before any cache is asked (with the cache off too), so they are counted apart, in neither term."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.lab import Lab, create_docs_table, orchestrate_timed
from bench.results import Result, Target, ratio
from swarm.core.errors import SwarmError
from swarm.core.log import get_logger

if TYPE_CHECKING:
    pass

log = get_logger()


def fig_cache(lab: Lab) -> list[Result]:
    s = lab.sizes
    texts, counts = lab.code_texts(s.cache_unique)
    n = s.cache_unique * s.cache_copies
    order = np.random.default_rng(5).permutation(n)
    rows = [(i + 1, texts[int(j) % len(texts)]) for i, j in enumerate(order)]
    all_tokens = sum(counts[int(j) % len(texts)] for j in order)
    dsn = lab.database("bench_cache")
    create_docs_table(dsn, "cached", rows)
    create_docs_table(dsn, "uncached", rows)
    runs: dict[str, Any] = {}
    for table, cache_size in (("cached", max(lab.base.embedding.cache_size, 1)), ("uncached", 0)):
        from swarm import commands

        cfg = lab.config(dsn, table, embedding={"cache_size": cache_size})
        lab.kill_swarm()
        run = orchestrate_timed(cfg, f"bench: cache {table}", before=functools.partial(commands.init, cfg))
        if run.code != 0 or run.rows != n:
            raise SwarmError(f"the {table} migration ended with exit code {run.code}, {run.rows}/{n} rows")
        infos = lab.migrator_infos()
        assert run.to_finish_s is not None
        runs[table] = {
            "seconds": round(run.to_finish_s, 2),
            "phases": run.phases,
            "hits": sum(i["cache_hits"] for i in infos),
            "shared_hits": sum(i["shared_cache_hits"] for i in infos),
            "computed": sum(i["cache_misses"] for i in infos),
            "batch_repeats": sum(i["batch_repeats"] for i in infos),
            "tokens_embedded": sum(i["tokens"] for i in infos),
            "migrators": len(infos),
            "cache_size": cache_size,
        }
    lab.kill_swarm()
    c, u = runs["cached"], runs["uncached"]
    lookups = c["hits"] + c["computed"]
    hit_rate = c["hits"] / lookups if lookups else 0.0
    best = 1 - s.cache_unique / lookups if lookups else 0.0  # each distinct content computed once in the swarm
    avoided = 1 - c["tokens_embedded"] / all_tokens if all_tokens else 0.0
    # The cache's own share: the uncached run already computes a batch's repeated rows once.
    avoided_by_cache = 1 - c["tokens_embedded"] / u["tokens_embedded"] if u["tokens_embedded"] else 0.0
    saved = u["seconds"] - c["seconds"]
    notes = (
        f"{n} rows, {s.cache_unique} distinct contents × {s.cache_copies} in random order; "
        f"{c['batch_repeats']} rows repeated an earlier row of their batch (deduplicated before the caches, not "
        f"counted); of the other {lookups}, {c['hits']} vectors from a cache ({c['shared_hits']} from the swarm's "
        f"shared cache) and {c['computed']} computed by the model: hit rate = cache hits / (cache hits + model "
        f"computations), best possible {best:.3f}; {c['migrators']} migrators (own LRU + the swarm's shared "
        f"cache); model work avoided {avoided:.1%} of all rows' tokens, {avoided_by_cache:.1%} of those the "
        f"cache_size = 0 run computed; "
        f"time {c['seconds']:.1f} s vs {u['seconds']:.1f} s with cache_size = 0: {saved:.1f} s saved "
        f"({saved / u['seconds']:.0%})"
    )
    return [
        Result(
            "cache_hit_rate",
            hit_rate,
            "",
            Target(">=", 0.95, "ratio"),
            baseline=best,
            baseline_label="best possible: every distinct content computed once in the swarm",
            ratio=ratio(hit_rate, best),
            ratio_label="hit rate / best possible",
            notes=notes,
            details={
                "runs": runs,
                "rows": n,
                "distinct": s.cache_unique,
                "cache_hits": c["hits"],
                "model_computations": c["computed"],
                "batch_repeats": c["batch_repeats"],
                "tokens_all_rows": all_tokens,
                "tokens_avoided_fraction": round(avoided, 4),
                "tokens_avoided_vs_uncached": round(avoided_by_cache, 4),
                "best_possible_hit_rate": best,
                "seconds_saved": round(saved, 2),
            },
        )
    ]
