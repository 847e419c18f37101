"""What a figure reports, how it is judged and printed (pure functions: tested without the real parts),
the figure names and the sizes of their workloads."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from swarm.core.errors import EXIT_FAILED, EXIT_OK, UsageError
from swarm.core.log import get_logger

if TYPE_CHECKING:
    pass

log = get_logger()


DIM = 384
ST_BATCH = 32  # sentence-transformers' own default for encode()
MINILM_Q8 = "all-MiniLM-L6-v2.Q8_0.gguf"
MINILM_F16 = "all-MiniLM-L6-v2.f16.gguf"


@dataclass(frozen=True)
class Target:
    """``subject op bound``; ``subject`` is ``"value"`` or ``"ratio"`` (what the bound applies to)."""

    op: str  # ">=", "<=" or "within" (|ratio - 1| <= bound)
    bound: float
    subject: str = "value"

    def check(self, value: float | None, ratio: float | None) -> bool | None:
        x = ratio if self.subject == "ratio" else value
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return None
        if self.op == ">=":
            return x >= self.bound
        if self.op == "<=":
            return x <= self.bound
        if self.op == "within":
            return abs(x - 1.0) <= self.bound
        raise ValueError(f"unknown target operator {self.op!r}")

    def __str__(self) -> str:
        if self.op == "within":
            return f"{self.subject} within 1 ± {self.bound:g}"
        return f"{self.subject} {self.op} {self.bound:g}"


@dataclass
class Result:
    """One line of the results table."""

    figure: str
    value: float | None
    unit: str
    target: Target
    baseline: float | None = None
    baseline_label: str = ""
    ratio: float | None = None
    ratio_label: str = "value / baseline"
    notes: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    # When an earlier run measured it: a figure kept from that run (``--only``), shown but never counted.
    measured: str | None = None

    @property
    def passed(self) -> bool | None:
        if self.error:
            return None
        return self.target.check(self.value, self.ratio)

    @property
    def verdict(self) -> str:
        if self.error:
            return "error"
        return {True: "pass", False: "miss", None: "n/a"}[self.passed]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target"] = str(self.target)
        d["target_spec"] = asdict(self.target)
        d["passed"] = self.passed
        d["verdict"] = self.verdict
        return d


def previous_results(out_dir: Path, *, quick: bool, rerun: Sequence[str]) -> list[Result]:
    """The figures of the last run in ``out_dir`` (same ``quick``) that this run does not measure again, so a
    ``--only`` run updates its figures in the table instead of dropping the others. Each keeps the date it was
    measured (``Result.measured``): the table shows it, and :func:`exit_code` does not count it."""
    path = out_dir / "results.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if bool(data.get("quick")) != quick:
        return []
    names = {fig for name in rerun for fig, _ in TARGETS.get(name, [])}
    when = (data.get("machine") or {}).get("date", "an earlier run")
    kept = []
    for d in data.get("results", []):
        if d.get("figure") in names:
            continue
        details = d.get("details") or {}
        notes = d.get("notes", "")
        if notes.startswith("(measured ") and ") " in notes:  # written before `measured` had its own field
            notes = notes.split(") ", 1)[1]
        try:
            r = Result(
                d["figure"],
                d.get("value"),
                d.get("unit", ""),
                Target(**d["target_spec"]),
                baseline=d.get("baseline"),
                baseline_label=d.get("baseline_label", ""),
                ratio=d.get("ratio"),
                ratio_label=d.get("ratio_label", ""),
                notes=notes,
                details=details,
                error=d.get("error"),
                measured=d.get("measured") or details.pop("measured", None) or when,
            )
        except (KeyError, TypeError):
            continue
        kept.append(r)
    return kept


def exit_code(results: Sequence[Result], *, quick: bool = False) -> int:
    """0 when this run measured a figure and every figure it measured met its target, 1 otherwise. Figures kept
    from an earlier run (``measured`` set) are in the table for reference and never counted, pass or miss.

    A ``--quick`` run checks that every figure runs: its workloads are too small to judge a target (fixed costs
    dominate a 600-row migration, one round of 48 texts is noise), so there 1 means a figure could not be
    measured, and the targets are judged by the full bench only. The table still shows pass or miss."""
    measured = [r for r in results if r.measured is None]
    if quick:
        return EXIT_OK if measured and all(r.error is None for r in measured) else EXIT_FAILED
    return EXIT_OK if measured and all(r.passed for r in measured) else EXIT_FAILED


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is missing or ``b`` is 0."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (linear interpolation, numpy's default)."""
    if not samples:
        raise ValueError("no samples")
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q))


def mean_recall(found: Sequence[Sequence[Any]], truth: Sequence[Sequence[Any]], k: int) -> float:
    """Mean over queries of recall@k (:func:`swarm.quality.recall_at_k`) of ``found`` against the exact top k."""
    from swarm.quality import recall_at_k

    if len(found) != len(truth) or not truth:
        raise ValueError("found and truth must be non-empty and of the same length")
    return float(
        np.mean(
            [recall_at_k([str(x) for x in f], [str(x) for x in t][:k], k) for f, t in zip(found, truth, strict=True)]
        )
    )


def version(dist: str) -> str:
    """The installed version of a distribution, or ``-``."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def _fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    ax = abs(x)
    s = f"{x:,.0f}" if ax >= 1000 else f"{x:.1f}" if ax >= 100 else f"{x:.2f}" if ax >= 1 else f"{x:.3f}"
    return f"{s} {unit}".strip()


def render_markdown(results: Sequence[Result], machine: dict[str, Any], *, quick: bool, seconds: float) -> str:
    """The results table (figure, value, baseline, ratio, target, pass/miss, load, notes) with the machine, the
    versions that produced it and the load average during the run."""
    load = machine.get("loadavg_start"), machine.get("loadavg_end")
    lines = [
        "# swarm bench"
        + (" (quick: smaller sizes, not comparable to the targets; its exit code counts errors only)" if quick else ""),
        "",
        f"Machine: {machine.get('host') or '-'}, {machine.get('cores')} cores, {machine.get('cpu_model')}, "
        f"{machine.get('memory_gb')} GB RAM, {machine.get('system')}.",
        f"Versions: {versions_line(machine)}.",
        f"Load average (1/5/15 min) at start {_loads(load[0])}, at end {_loads(load[1])}; "
        f"run took {seconds / 60:.1f} min on {machine.get('date')}.",
    ]
    if any(r.measured for r in results):
        lines.append(
            "Figures whose result says *measured DATE* were not measured by this run: they are kept from an "
            "earlier one for reference and are not counted in this run's exit code."
        )
    lines += [
        "",
        "| figure | value | baseline | ratio | target | result | load (1 min, start → end) | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        verdict = {"error": "**error**", "miss": "**miss**"}.get(r.verdict, r.verdict)
        if r.measured:
            verdict += f" (*measured {r.measured}*, not counted)"
        load_cell = figure_load(r)
        if r.error:
            lines.append(f"| {r.figure} | - | - | - | {r.target} | {verdict} | {load_cell} | {_cell(r.error)} |")
            continue
        base = r.baseline_label or "-"
        if r.baseline is not None:
            base = f"{_fmt(r.baseline)} ({r.baseline_label})" if r.baseline_label else _fmt(r.baseline)
        rat = f"{_fmt(r.ratio)} ({r.ratio_label})" if r.ratio is not None else "-"
        lines.append(
            f"| {r.figure} | {_fmt(r.value, r.unit)} | {_cell(base)} | {_cell(rat)} | {r.target} | {verdict} | "
            f"{load_cell} | {_cell(r.notes)} |"
        )
    lines += ["", "Details of each figure (sweeps, phases, per-round timings) are in `results.json`.", ""]
    return "\n".join(lines)


def versions_line(machine: dict[str, Any]) -> str:
    """Python, llama-cpp-python and the llama.cpp it vendors (commit, ggml, the CPU features it was built with),
    torch, sentence-transformers, Ray, PostgreSQL and pgvector."""
    build = ", ".join(
        f"{label}{machine[key]}"
        for key, label in (("llama_cpp_commit", "llama.cpp "), ("ggml", "ggml "), ("llama_cpp_system", ""))
        if machine.get(key)
    )
    return (
        f"Python {machine.get('python')}, llama-cpp-python {machine.get('llama_cpp')}"
        + (f" ({build})" if build else "")
        + f", torch {machine.get('torch') or '-'}, sentence-transformers {machine.get('sentence_transformers') or '-'}"
        f", Ray {machine.get('ray')}, PostgreSQL {machine.get('postgres') or '-'}"
        f" + pgvector {machine.get('pgvector') or '-'}"
    )


def figure_load(r: Result) -> str:
    """The 1-minute load average when the figure started and when it ended (``-`` where not recorded)."""
    start, end = r.details.get("loadavg_start"), r.details.get("loadavg_after")
    if not start and not end:
        return "-"
    return " → ".join(f"{x[0]:.2f}" if x else "-" for x in (start, end))


def _loads(x: Any) -> str:
    return "/".join(f"{v:.2f}" for v in x) if x else "-"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_results(
    out_dir: Path,
    results: Sequence[Result],
    machine: dict[str, Any],
    *,
    quick: bool,
    seconds: float,
    figures: Sequence[str],
) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` in ``out_dir`` (atomically: temp name, then rename)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {
        "quick": quick,
        "figures_run": list(figures),
        "seconds": round(seconds, 1),
        "machine": machine,
        "results": [r.as_dict() for r in results],
    }
    paths = out_dir / "results.json", out_dir / "results.md"
    texts = (
        json.dumps(data, indent=2, default=_json_default),
        render_markdown(results, machine, quick=quick, seconds=seconds),
    )
    for path, text in zip(paths, texts, strict=True):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return paths


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


# --------------------------------------------------------------------------------------------------------------
# Figure names and sizes
# --------------------------------------------------------------------------------------------------------------
FIGURES = ("embed", "pipeline", "rss", "search", "highdim", "target", "cache", "overhead", "load", "vecshift")
ALIASES = {
    "embed_ratio_vs_sentence_transformers": "embed",
    "embed_ratio_f16_vs_sentence_transformers": "embed",
    "pipeline_efficiency": "pipeline",
    "migrator_rss_mb": "rss",
    "search_p95_ms": "search",
    "search_recall_at_10": "search",
    "highdim_index_mb": "highdim",
    "highdim_build_s": "highdim",
    "highdim_p95_ms": "highdim",
    "highdim_recall_at_10": "highdim",
    **{f"target_{m}_{q}": "target" for m in ("tokens_per_s", "peak_rss_mb") for q in ("f16", "q8_0", "q4_k_m")},
    "cache_hit_rate": "cache",
    "overhead_per_row_us": "overhead",
    "load_errors": "load",
    "load_max_connections": "load",
    "migration_ratio_vs_vecshift": "vecshift",
}


def select_figures(only: Sequence[str] | None) -> list[str]:
    """The figures to run, in the bench's order; ``only`` takes figure names or aliases."""
    if not only:
        return list(FIGURES)
    wanted = set()
    for name in only:
        key = name.strip()
        if not key:
            continue
        key = ALIASES.get(key, key)
        if key not in FIGURES:
            names = ", ".join([*FIGURES, *ALIASES])
            raise UsageError(f"--only {name}: no such figure; use one of {names}")
        wanted.add(key)
    if not wanted:
        raise UsageError("--only: name at least one figure")
    return [f for f in FIGURES if f in wanted]


@dataclass(frozen=True)
class Sizes:
    """How big each figure's workload is (the full bench, or ``--quick``)."""

    embed_texts: int = 300
    embed_rounds: int = 5  # issue 13: a median over at least 5 alternating runs
    pipeline_rows: int = 5000
    rss_rows: int = 1000  # when the pipeline figure did not run first
    search_rows: int = 100_000
    search_queries: int = 200
    search_exact_queries: int = 100
    highdim_rows: int = 100_000
    highdim_queries: int = 100
    target_texts: int = 40
    cache_unique: int = 100
    cache_copies: int = 10
    overhead_rows: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    # None: the demo's rows (real functions, 384-dim legacy and new vectors). A width (e.g. 8): narrow synthetic
    # rows (a one-line text, legacy and new vectors of that width), for the 10M-row rehearsal on a laptop's disk.
    overhead_dim: int | None = None
    load_rows: int = 1000  # when the pipeline figure did not run first
    load_requests: int = 400  # per concurrency level (1, 8, 32, 128 clients)
    vecshift_rows: int = 2000  # migrated by each side; ~300k tokens, a few minutes each on 2 quiet cores

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            embed_texts=48,
            embed_rounds=3,
            pipeline_rows=600,
            rss_rows=300,
            search_rows=10_000,
            search_queries=50,
            search_exact_queries=30,
            highdim_rows=5_000,
            highdim_queries=30,
            target_texts=6,
            cache_unique=30,
            overhead_rows=(2_000, 10_000, 40_000),
            load_rows=300,
            load_requests=160,
            vecshift_rows=200,
        )


TARGETS = {
    "embed": [
        ("embed_ratio_vs_sentence_transformers", Target(">=", 1.5, "ratio")),
        ("embed_ratio_f16_vs_sentence_transformers", Target(">=", 1.5, "ratio")),
    ],
    "pipeline": [("pipeline_efficiency", Target(">=", 0.90, "ratio"))],
    "rss": [("migrator_rss_mb", Target("<=", 400))],
    "search": [("search_p95_ms", Target("<=", 10)), ("search_recall_at_10", Target(">=", 0.95))],
    "highdim": [
        ("highdim_index_mb", Target("<=", 0.25, "ratio")),
        ("highdim_build_s", Target("<=", 1.0, "ratio")),
        ("highdim_p95_ms", Target("<=", 50)),
        ("highdim_recall_at_10", Target(">=", 0.95)),
    ],
    "target": [
        (f"target_{m}_{q}", Target(">=", 10, "ratio") if m == "tokens_per_s" else Target("<=", 0.25, "ratio"))
        for q in ("f16", "q8_0", "q4_k_m")
        for m in ("tokens_per_s", "peak_rss_mb")
    ],
    "cache": [("cache_hit_rate", Target(">=", 0.95, "ratio"))],
    "overhead": [("overhead_per_row_us", Target("<=", 1.25, "ratio"))],
    "load": [("load_errors", Target("<=", 0)), ("load_max_connections", Target("<=", 1.0, "ratio"))],
    "vecshift": [("migration_ratio_vs_vecshift", Target(">=", 1.5, "ratio"))],
}
