"""``python -m bench`` (``make bench``): the performance figures, each next to a baseline measured in the same run.

Every figure runs the real parts: the GGUF model through llama.cpp, an embedded PostgreSQL + pgvector started in
a scratch state directory, and a Ray head node started for the run; all of it is stopped and removed at the end.
A baseline is measured in the same process and the same minutes as its figure, so a ratio compares like with
like even on a shared machine (absolute numbers still move with the machine's load, which is recorded).

Figures (``--only`` takes these names or the short aliases in brackets):

1. ``embed_ratio_vs_sentence_transformers`` and ``embed_ratio_f16_vs_sentence_transformers`` [embed]:
   whole-machine tokens/s of :class:`~model.embedder.LlamaEmbedder` as a migration runs it (migrators x threads;
   all-MiniLM-L6-v2 Q8_0, the demo's model, and f16) over sentence-transformers' best split of the same cores, on
   the same model and texts, each side in its own processes; rotating rounds, the median of per-round ratios.
2. ``pipeline_efficiency`` [pipeline]: rows/s of a whole migration (``init`` + ``orchestrate`` on a fresh
   database, from the ``init`` call to the migration's ``finished_at``) over rows/s of the same embedder
   embedding the same texts, batch by batch, in this process.
3. ``migrator_rss_mb`` [rss]: peak RSS (VmHWM) of a data-migrator actor after a migration, next to a rehearsal
   migrator (same actor and work, no model).
4. ``search_p95_ms`` and ``search_recall_at_10`` [search]: swarm's search SQL through the ANN index swarm builds,
   on synthetic 384-dim vectors shaped like MiniLM's (not model embeddings), with the configured index and
   settings, next to exact search (recall 1.0 by definition); ivfflat probes and hnsw ef_search are swept.
5. ``highdim_index_mb``, ``highdim_build_s``, ``highdim_p95_ms``, ``highdim_recall_at_10`` [highdim]: hnsw-bq
   (hnsw on ``binary_quantize(v)::bit(3584)``, re-ranked by exact distance) next to hnsw on ``halfvec(3584)``,
   100,000 synthetic vectors of nomic-embed-code's width (bench/highdim.py).
6. ``target_tokens_per_s_*`` and ``target_peak_rss_mb_*`` [target]: llama.cpp f16 / Q8_0 / Q4_K_M against
   transformers fp32 on a Qwen2-0.5B-shaped model (nomic-embed-code's architecture), same weights, texts and
   threads, each run in its own process (bench/target.py).
7. ``cache_hit_rate`` [cache]: a migration of a table whose rows repeat 10% distinct contents: vectors taken from
   a cache over those plus model computations (rows repeating an earlier row of their batch counted apart),
   against the best possible rate of the run; the time saved against the same migration with the cache off.
8. ``overhead_per_row_us`` [overhead]: ``orchestrate --rehearse`` at three table sizes with the swarm up, from the
   call to the migration's ``finished_at``, per row; each size against the smallest (at most 1.25x).
9. ``load_errors`` and ``load_max_connections`` [load]: ``swarm serve`` on 127.0.0.1 under 1, 8, 32 and 128
   concurrent clients (a few hundred searches each, share 50%): p50/p95 and 503s per level in the notes, errors
   (target 0) and the most database connections the server held (target: at most ``serving.pool_size``).
10. ``migration_ratio_vs_vecshift`` [vecshift]: rows/s of a swarm migration over rows/s of vecshift (PyPI, the
   peer tool, embedding through ``llama_cpp.server``) migrating a fresh copy of the same table to the same GGUF
   on the same threads (bench/vecshift.py).

Results go to ``bench/results.json`` and ``bench/results.md``, with the machine, the versions and the load average
during each figure. The exit code is 0 when every figure this run measured met its target, 1 otherwise (the table
says which and why); a ``--quick`` run only checks that every figure runs (its sizes are too small to judge a
target), so its exit code is 1 only when a figure could not be measured; with ``--only``, the other figures of
the last run stay in the table with the date they were measured, and are not counted."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.cache import fig_cache
from bench.embed import fig_embed
from bench.highdim import fig_highdim
from bench.lab import Lab
from bench.load import fig_load
from bench.overhead import fig_overhead
from bench.pipeline import fig_pipeline, fig_rss
from bench.results import (
    TARGETS,
    Result,
    Sizes,
    _fmt,
    _loads,
    exit_code,
    previous_results,
    render_markdown,
    select_figures,
    version,
    write_results,
)
from bench.search import fig_search
from bench.target import fig_target
from bench.vecshift import fig_vecshift
from swarm.core.log import get_logger

if TYPE_CHECKING:
    from swarm.core.config import Config

log = get_logger()


RUNNERS: dict[str, Callable[[Lab], list[Result]]] = {
    "embed": fig_embed,
    "pipeline": fig_pipeline,
    "rss": fig_rss,
    "search": fig_search,
    "highdim": fig_highdim,
    "target": fig_target,
    "cache": fig_cache,
    "overhead": fig_overhead,
    "load": fig_load,
    "vecshift": fig_vecshift,
}


def machine_info() -> dict[str, Any]:
    """Host, cores, CPU model, memory, OS, versions and load: printed with every result."""
    model = platform.processor() or "-"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    return {
        "host": platform.node(),
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": mem,
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "llama_cpp": version("llama-cpp-python"),
        **llama_cpp_build(),
        "ray": version("ray"),
        "torch": version("torch"),
        "sentence_transformers": version("sentence-transformers"),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def llama_cpp_build() -> dict[str, str]:
    """The llama.cpp that llama-cpp-python vendors: its commit, ggml's version and the CPU features it was built
    with (read from the libraries, no model loaded); empty where this llama-cpp-python does not expose them."""
    import ctypes

    out: dict[str, str] = {}
    try:
        import llama_cpp
        from llama_cpp import llama_cpp as lib
    except Exception:  # not installed, or its library does not load: the versions line says "-"
        return out
    for key, symbol in (("llama_cpp_commit", "ggml_commit"), ("ggml", "ggml_version")):
        with contextlib.suppress(AttributeError, OSError):
            fn = getattr(lib._lib, symbol)  # ggml's, reached through libllama (not bound by llama-cpp-python)
            fn.argtypes, fn.restype = [], ctypes.c_char_p
            out[key] = fn().decode()
    with contextlib.suppress(Exception):
        out["llama_cpp_system"] = system_features(llama_cpp.llama_print_system_info().decode())
    return out


def system_features(info: str) -> str:
    """``CPU : SSE3 = 1 | AVX = 1 | AVX512 = 0 | ...`` (llama_print_system_info) as ``CPU: SSE3 AVX ...``."""
    parts = [p.strip().replace(" : ", ": ") for p in info.split("|")]
    return " ".join(p.removesuffix(" = 1") for p in parts if p and not p.endswith(" = 0"))


def run(cfg: Config, *, only: list[str] | None, quick: bool, out_dir: str | os.PathLike[str] | None = None) -> int:
    """Run the selected figures (all by default) and write ``bench/results.json`` and ``results.md``.

    Returns 0 when every figure was measured and met its target (with ``quick``: was measured), 1 otherwise.
    ``out_dir`` defaults to
    ``bench/`` under the project root.
    """
    figures = select_figures(only)
    sizes = Sizes.quick() if quick else Sizes()
    if os.environ.get("SWARM_BENCH_OVERHEAD_ROWS"):  # e.g. 10000,10000000: the 10M-row rehearsal, outside CI
        rows = tuple(int(x) for x in os.environ["SWARM_BENCH_OVERHEAD_ROWS"].split(","))
        sizes = dataclasses.replace(sizes, overhead_rows=rows)
    if os.environ.get("SWARM_BENCH_OVERHEAD_DIM"):  # e.g. 8: narrow synthetic rows for that rehearsal
        sizes = dataclasses.replace(sizes, overhead_dim=int(os.environ["SWARM_BENCH_OVERHEAD_DIM"]))
    out = Path(out_dir) if out_dir is not None else Path(cfg.root or ".") / "bench"
    machine = machine_info()
    started = time.perf_counter()
    kept = previous_results(out, quick=quick, rerun=figures) if only else []
    results: list[Result] = []
    lab = Lab(cfg, sizes)
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds through lab.close()

    signal.signal(signal.SIGTERM, on_term)
    _say(
        f"swarm bench{' --quick' if quick else ''}: {', '.join(figures)} on {machine['cores']} cores "
        f"({machine['cpu_model']}), load {_loads(machine['loadavg_start'])}"
    )
    try:
        for name in figures:
            t, load_before = time.perf_counter(), [round(x, 2) for x in os.getloadavg()]
            _say(f"\n== {name} ...")
            try:
                got = RUNNERS[name](lab)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # one figure failing must not lose the others
                log.exception("bench.figure_failed", figure=name)
                reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
                got = [Result(fig, None, "", target, error=reason) for fig, target in TARGETS[name]]
            for r in got:
                r.details.setdefault("figure_seconds", round(time.perf_counter() - t, 1))
                r.details.setdefault("loadavg_start", load_before)
                r.details.setdefault("loadavg_after", [round(x, 2) for x in os.getloadavg()])
                _say(_line(r))
            results.extend(got)
            machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
            elapsed = time.perf_counter() - started
            write_results(out, _ordered(kept + results), machine, quick=quick, seconds=elapsed, figures=figures)
        machine.update(lab.server_versions())
    finally:
        lab.close()
        signal.signal(signal.SIGTERM, previous)
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    seconds = time.perf_counter() - started
    results = _ordered(kept + results)
    json_path, md_path = write_results(out, results, machine, quick=quick, seconds=seconds, figures=figures)
    _say("\n" + render_markdown(results, machine, quick=quick, seconds=seconds))
    _say(f"written: {json_path}, {md_path}")
    return exit_code(results, quick=quick)


def _ordered(results: list[Result]) -> list[Result]:
    """In the table's order (the order of TARGETS)."""
    order = [fig for figs in TARGETS.values() for fig, _ in figs]
    return sorted(results, key=lambda r: order.index(r.figure) if r.figure in order else len(order))


def _line(r: Result) -> str:
    if r.error:
        return f"   {r.figure}: ERROR {r.error}"
    base = f"{_fmt(r.baseline)} {r.baseline_label}" if r.baseline is not None else "-"
    rat = f"{_fmt(r.ratio)} ({r.ratio_label})" if r.ratio is not None else "-"
    return f"   {r.figure}: {_fmt(r.value, r.unit)} | baseline {base} | ratio {rat} | {r.target}: {r.verdict}"


def _say(text: str) -> None:
    print(text, flush=True)
