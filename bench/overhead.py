"""``overhead_per_row_us``: ``orchestrate --rehearse`` at three table sizes, per row."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from bench.lab import Lab, Run, create_docs_table, orchestrate_timed
from bench.results import Result, Target, ratio
from swarm.core.errors import SwarmError
from swarm.core.log import get_logger

if TYPE_CHECKING:
    pass

log = get_logger()


def fig_overhead(lab: Lab) -> list[Result]:
    from swarm import commands

    sizes = lab.sizes.overhead_rows
    narrow = lab.sizes.overhead_dim
    dsn = lab.database("bench_overhead")
    seeded: dict[int, float] = {}
    for n in sizes:
        t = time.perf_counter()
        create_docs_table(dsn, f"rows_{n}", _rows(lab, n, narrow), seed=n, **({"dim": narrow} if narrow else {}))
        seeded[n] = round(time.perf_counter() - t, 1)
    # Narrow rows: the rehearsal's vectors are that wide, and no legacy model is named (the check that it gives
    # the legacy column's width is the real run's; a rehearsal with validators off never loads it).
    shape: dict[str, dict[str, Any]] = (
        {"embedding": {"dimension": narrow}, "legacy": {"model_path": str(lab.scratch / "no-legacy-model.gguf")}}
        if narrow
        else {}
    )
    cfg0 = lab.config(dsn, f"rows_{sizes[0]}", **shape)
    lab.kill_swarm()
    t = time.perf_counter()
    commands.init(cfg0)
    commands.spawn(cfg0, "data-migrator", cfg0.swarm.migrators, rehearse=True)
    spawn_s = time.perf_counter() - t
    runs: dict[int, Run] = {}
    coord: dict[int, dict[str, Any]] = {}  # the coordinator's memory after each size (it must not grow with them)
    for n in sizes:
        cfg = lab.config(dsn, f"rows_{n}", **shape)
        runs[n] = orchestrate_timed(cfg, f"bench: rehearsal {n}", rehearse=True)
        r = runs[n]
        if r.code != 0 or r.rows != n:
            raise SwarmError(f"the {n}-row rehearsal ended with exit code {r.code}, {r.rows}/{n} rows")
        coord[n] = lab.coordinator_info()
        log.info("bench.overhead", rows=n, seconds=r.to_finish_s, phases=r.phases, coordinator=coord[n])
    lab.kill_swarm()
    per_row = {n: (r.to_finish_s or r.wall_s) / n * 1e6 for n, r in runs.items()}
    base_n = sizes[0]
    sw = cfg0.swarm
    out = []
    for n in sizes:
        r = runs[n]
        back = r.phases.get("backfill", 0.0)
        out.append(
            Result(
                f"overhead_per_row_us[{_short(n)}]",
                per_row[n],
                "µs",
                Target("<=", 1.25, "ratio"),
                baseline=per_row[base_n],
                baseline_label=f"µs per row at {_short(base_n)}",
                ratio=ratio(per_row[n], per_row[base_n]),
                ratio_label=f"vs {_short(base_n)}",
                notes=(
                    (f"narrow synthetic rows (one-line texts, vectors of width {narrow}); " if narrow else "")
                    + f"orchestrate --rehearse on {n:,} rows with the swarm up ({sw.migrators} migrators, shard_rows "
                    f"{sw.shard_rows}, batch {cfg0.embedding.batch_size}): {r.to_finish_s or r.wall_s:.1f} s to "
                    f"finished_at, backfill {back:.1f} s ({back / n * 1e6:.0f} µs/row); coordinator RSS "
                    f"{coord[n].get('rss_mb')} MB (peak {coord[n].get('peak_rss_mb')} MB)"
                ),
                details={
                    "rows": n,
                    "row_shape": f"synthetic, width {narrow}" if narrow else "demo corpus, 384 dims",
                    "seconds_to_finish": r.to_finish_s,
                    "orchestrate_wall_s": round(r.wall_s, 2),
                    "phases": r.phases,
                    "seed_seconds": seeded[n],
                    "spawn_seconds": round(spawn_s, 1),
                    "backfill_us_per_row": round(back / n * 1e6, 2),
                    "coordinator_rss_mb": coord[n].get("rss_mb"),
                    "coordinator_peak_rss_mb": coord[n].get("peak_rss_mb"),
                },
            )
        )
    return out


def _rows(lab: Lab, n: int, narrow: int | None) -> Iterator[tuple[int, str]]:
    """The table's (id, content): the demo corpus repeated, or one short synthetic line per row."""
    if narrow:
        return ((i, f"def f_{i}(x): return x + {i % 9973}") for i in range(1, n + 1))
    docs = [d.content for d in lab.docs()]
    return ((i, docs[i % len(docs)]) for i in range(1, n + 1))


def _short(n: int) -> str:
    return (
        f"{n // 1_000_000}M"
        if n >= 1_000_000 and n % 1_000_000 == 0
        else (f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n))
    )
