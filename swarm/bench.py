"""``python -m swarm bench``: the performance figures of issue 5, each next to a baseline measured in the same run.

Every figure runs the real parts: the GGUF model through llama.cpp, an embedded PostgreSQL + pgvector started in
a scratch state directory, and a Ray head node started for the run; all of it is stopped and removed at the end.
A baseline is measured in the same process and the same minutes as its figure, so a ratio compares like with
like even on a shared machine (absolute numbers still move with the machine's load, which is recorded).

Figures (``--only`` takes these names or the short aliases in brackets):

1. ``embed_ratio_vs_sentence_transformers`` [embed]: tokens/s of :class:`~model.embedder.LlamaEmbedder` (the
   all-MiniLM-L6-v2 Q8_0 GGUF) over sentence-transformers' on the same model, texts and thread count; the two
   are timed in alternating rounds and the figure is the median of the per-round ratios.
2. ``pipeline_efficiency`` [pipeline]: rows/s of a whole migration (``init`` + ``orchestrate`` on a fresh
   database, from the ``init`` call to the migration's ``finished_at``) over rows/s of the same embedder
   embedding the same texts, batch by batch, in this process.
3. ``migrator_rss_mb`` [rss]: peak RSS (VmHWM) of a data-migrator actor after a migration, next to a rehearsal
   migrator (same actor and work, no model).
4. ``search_p95_ms`` and ``search_recall_at_10`` [search]: swarm's search SQL through the ANN index swarm builds,
   on synthetic 384-dim vectors shaped like MiniLM's; ivfflat probes and hnsw ef_search are swept and the
   cheapest setting with recall@10 >= 0.95 is reported, next to exact search.
5. ``cache_hit_rate`` [cache]: a migration of a table whose rows repeat 10% distinct contents, next to the same
   migration with the cache off (time saved).
6. ``overhead_per_row_us`` [overhead]: ``orchestrate --rehearse`` at three table sizes with the swarm up, from the
   call to the migration's ``finished_at``, per row; each size against the smallest.

Results go to ``bench/results.json`` and ``bench/results.md``. The exit code is 0 when every figure was measured
and met its target, 1 otherwise (the table says which and why).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import platform
import shutil
import signal
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from swarm.errors import EXIT_FAILED, EXIT_OK, SwarmError, UsageError
from swarm.log import get_logger

if TYPE_CHECKING:
    import psycopg

    from swarm.config import Config

log = get_logger()

DIM = 384
ST_BATCH = 32  # sentence-transformers' own default for encode()
MINILM_Q8 = "all-MiniLM-L6-v2.Q8_0.gguf"
MINILM_F16 = "all-MiniLM-L6-v2.f16.gguf"


# --------------------------------------------------------------------------------------------------------------
# Results: what a figure reports, how it is judged and printed (pure functions: tested without the real parts)
# --------------------------------------------------------------------------------------------------------------
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
    ``--only`` run updates its figures in the table instead of dropping the others. Each keeps a note of when
    it was measured."""
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
                notes=d.get("notes", ""),
                details=d.get("details") or {},
                error=d.get("error"),
            )
        except (KeyError, TypeError):
            continue
        r.details.setdefault("measured", when)
        if not r.notes.startswith("(measured "):
            r.notes = f"(measured {r.details['measured']}) {r.notes}"
        kept.append(r)
    return kept


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


def recall_at_k(found: Sequence[Sequence[Any]], truth: Sequence[Sequence[Any]], k: int) -> float:
    """Mean over queries of |found[:k] ∩ truth[:k]| / k."""
    if len(found) != len(truth) or not truth:
        raise ValueError("found and truth must be non-empty and of the same length")
    return float(np.mean([len(set(list(f)[:k]) & set(list(t)[:k])) / k for f, t in zip(found, truth, strict=True)]))


def _fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    ax = abs(x)
    s = f"{x:,.0f}" if ax >= 1000 else f"{x:.1f}" if ax >= 100 else f"{x:.2f}" if ax >= 1 else f"{x:.3f}"
    return f"{s} {unit}".strip()


def render_markdown(results: Sequence[Result], machine: dict[str, Any], *, quick: bool, seconds: float) -> str:
    """The results table (figure, value, baseline, ratio, target, pass/miss, notes) with the machine."""
    load = machine.get("loadavg_start"), machine.get("loadavg_end")
    lines = [
        "# swarm bench" + (" (quick: smaller sizes, not comparable to the targets)" if quick else ""),
        "",
        f"Machine: {machine.get('cores')} cores, {machine.get('cpu_model')}, {machine.get('memory_gb')} GB RAM, "
        f"{machine.get('system')}; Python {machine.get('python')}, llama-cpp-python {machine.get('llama_cpp')}, "
        f"PostgreSQL {machine.get('postgres') or '-'} + pgvector {machine.get('pgvector') or '-'}, "
        f"Ray {machine.get('ray')}.",
        f"Load average (1/5/15 min) at start {_loads(load[0])}, at end {_loads(load[1])}; "
        f"run took {seconds / 60:.1f} min on {machine.get('date')}.",
        "",
        "| figure | value | baseline | ratio | target | result | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.error:
            lines.append(f"| {r.figure} | - | - | - | {r.target} | **error** | {_cell(r.error)} |")
            continue
        base = r.baseline_label or "-"
        if r.baseline is not None:
            base = f"{_fmt(r.baseline)} ({r.baseline_label})" if r.baseline_label else _fmt(r.baseline)
        rat = f"{_fmt(r.ratio)} ({r.ratio_label})" if r.ratio is not None else "-"
        verdict = r.verdict if r.verdict != "miss" else "**miss**"
        lines.append(
            f"| {r.figure} | {_fmt(r.value, r.unit)} | {_cell(base)} | {_cell(rat)} | {r.target} | {verdict} | "
            f"{_cell(r.notes)} |"
        )
    lines += ["", "Details of each figure (sweeps, phases, per-round timings) are in `results.json`.", ""]
    return "\n".join(lines)


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
FIGURES = ("embed", "pipeline", "rss", "search", "cache", "overhead")
ALIASES = {
    "embed_ratio_vs_sentence_transformers": "embed",
    "pipeline_efficiency": "pipeline",
    "migrator_rss_mb": "rss",
    "search_p95_ms": "search",
    "search_recall_at_10": "search",
    "cache_hit_rate": "cache",
    "overhead_per_row_us": "overhead",
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
    embed_rounds: int = 3
    pipeline_rows: int = 5000
    rss_rows: int = 1000  # when the pipeline figure did not run first
    search_rows: int = 100_000
    search_queries: int = 200
    search_exact_queries: int = 100
    cache_unique: int = 100
    cache_copies: int = 10
    overhead_rows: tuple[int, ...] = (10_000, 100_000, 1_000_000)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            embed_texts=48,
            embed_rounds=1,
            pipeline_rows=600,
            rss_rows=300,
            search_rows=10_000,
            search_queries=50,
            search_exact_queries=30,
            cache_unique=30,
            overhead_rows=(2_000, 10_000, 40_000),
        )


# --------------------------------------------------------------------------------------------------------------
# The real parts: a scratch embedded PostgreSQL and a Ray head, started on demand, stopped at the end
# --------------------------------------------------------------------------------------------------------------
class Lab:
    """The bench's PostgreSQL server, Ray head, corpus and configs; :meth:`close` removes every trace."""

    def __init__(self, cfg: Config, sizes: Sizes) -> None:
        from model import provision

        self.base = cfg
        self.sizes = sizes
        self.model_dir = Path(provision.__file__).resolve().parent
        self.scratch = Path(tempfile.mkdtemp(prefix="swarm-bench-"))
        # pgserver runs PostgreSQL as its own user when we are root: it must be able to pass through.
        os.chmod(self.scratch, 0o711)
        self.state_dir = self.scratch / ".swarm"
        self._server: Any = None
        self._ray: dict[str, Any] | None = None
        self._docs: list[Any] | None = None
        self._tokens: list[int] | None = None
        self.shared: dict[str, Any] = {}  # what one figure leaves for another (the pipeline's migrators)

    # -- models ----------------------------------------------------------------------------------------------
    def models(self) -> tuple[Path, Path]:
        """(Q8_0, f16) MiniLM GGUFs, built by ``model prepare`` if missing (kept when valid)."""
        from model.provision import prepare

        if not (self.model_dir / MINILM_Q8).exists() or not (self.model_dir / MINILM_F16).exists():
            prepare(self.model_dir)
        return self.model_dir / MINILM_Q8, self.model_dir / MINILM_F16

    # -- PostgreSQL ------------------------------------------------------------------------------------------
    def admin_dsn(self) -> str:
        from swarm.db import embedded_server

        if self._server is None:
            self._server = embedded_server(self.state_dir)
        return str(self._server.get_uri())

    def database(self, name: str) -> str:
        """A fresh database ``name`` with pgvector; returns its DSN."""
        import psycopg
        from psycopg.conninfo import make_conninfo

        admin = self.admin_dsn()
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            c.execute(f'CREATE DATABASE "{name}"')
        dsn = make_conninfo(admin, dbname=name)
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE EXTENSION IF NOT EXISTS vector")
        return dsn

    def server_versions(self) -> dict[str, str | None]:
        if self._server is None:
            return {"postgres": None, "pgvector": None}
        import psycopg

        with psycopg.connect(self.admin_dsn(), autocommit=True) as c:
            pg = c.execute("SHOW server_version").fetchone()
            vec = c.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'").fetchone()
        return {"postgres": pg[0] if pg else None, "pgvector": vec[0] if vec else None}

    # -- Ray ---------------------------------------------------------------------------------------------------
    def ray_address(self) -> str:
        from swarm import runtime

        if self._ray is None:
            self._ray = runtime.start_head(self.state_dir)
            runtime.connect(self.state_dir, self._ray["address"])
        return str(self._ray["address"])

    def kill_swarm(self) -> None:
        """No actors left (each figure's swarm carries its own config)."""
        if self._ray is not None:
            from swarm import agents_ray

            agents_ray.kill_all()
            _wait_until(lambda: not _named_actors(), timeout=30)

    def migrator_infos(self) -> list[dict[str, Any]]:
        import ray

        from swarm import runtime

        handles = [runtime.get_actor(n) for n in runtime.list_agents("data-migrator-")]
        return list(ray.get([h.info.remote() for h in handles if h is not None]))

    # -- configs -------------------------------------------------------------------------------------------
    def config(self, dsn: str, table: str, **sections: dict[str, Any]) -> Config:
        """The user's config (knobs, env overrides) on the bench's database, Ray head and MiniLM models.

        Validators are off and the rollout manual: the figures time the migration, not the quality gates.
        """
        from pydantic import SecretStr

        from swarm.config import Config

        q8, f16 = self.models()
        forced: dict[str, dict[str, Any]] = {
            "database": {
                "dsn": SecretStr(dsn),
                "table": table,
                "id_column": "id",
                "content_column": "content",
                "legacy_column": "embedding",
            },
            "embedding": {
                "model": "all-MiniLM-L6-v2-Q8_0",
                "model_path": str(q8),
                "dimension": DIM,
                "truncate_dim": None,
                "document_prefix": "",
                "query_prefix": "",
            },
            "legacy": {"model": "all-MiniLM-L6-v2", "model_path": str(f16), "document_prefix": "", "query_prefix": ""},
            "swarm": {"ray_address": self.ray_address(), "validators": 0},
            "rollout": {"auto": False, "alerts": str(self.base.path(self.base.rollout.alerts))},
            "validation": {"queries": str(self.scratch / "queries.jsonl")},
        }
        for key, values in sections.items():
            forced.setdefault(key, {}).update(values)
        data = self.base.model_dump(mode="json")
        data["database"]["dsn"] = dsn
        cfg = Config(**data, source=self.base.source, root=str(self.scratch))
        # Assigned after construction so that SWARM_DATABASE__DSN and friends cannot point the bench elsewhere;
        # the other environment overrides (batch size, migrators, ...) stay, to measure a knob.
        for key, values in forced.items():
            section = getattr(cfg, key)
            for name, value in values.items():
                setattr(section, name, value)
        return cfg

    # -- corpus ----------------------------------------------------------------------------------------------
    def docs(self) -> list[Any]:
        """The demo corpus (real standard-library functions), built once."""
        if self._docs is None:
            from swarm import corpus

            self._docs, _ = corpus.build()
        return self._docs

    def token_counts(self) -> list[int]:
        """Each corpus document's length in the model's tokens ([CLS] and [SEP] included)."""
        if self._tokens is None:
            from model.embedder import LlamaEmbedder

            q8, _ = self.models()
            with LlamaEmbedder(q8, cache_size=0, n_threads=1) as e:
                self._tokens = [len(e.tokenize(d.content)) for d in self.docs()]
        return self._tokens

    def code_texts(self, n: int, lo: int = 176, hi: int = 256) -> tuple[list[str], list[int]]:
        """``n`` functions of ``lo``..``hi`` tokens (mean ~215; under sentence-transformers' 256-token limit, so
        neither side truncates), evenly spread over the corpus. Returns (texts, token counts)."""
        pool = [(d.content, t) for d, t in zip(self.docs(), self.token_counts(), strict=True) if lo <= t <= hi]
        if len(pool) < n:
            raise SwarmError(f"the corpus has {len(pool)} functions of {lo}..{hi} tokens; {n} needed")
        step = len(pool) / n
        picked = [pool[int(i * step)] for i in range(n)]
        return [p[0] for p in picked], [p[1] for p in picked]

    # -- teardown ---------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the actors, the Ray head and PostgreSQL this bench started; remove the scratch directory."""
        from swarm.db import stop_embedded

        if self._ray is not None:
            import ray

            from swarm import agents_ray, runtime

            with contextlib.suppress(Exception):
                agents_ray.kill_all()
            with contextlib.suppress(Exception):
                ray.shutdown()
            with contextlib.suppress(Exception):
                runtime.stop_head(self.state_dir)
            temp_dir = self._ray.get("temp_dir")
            if temp_dir and Path(temp_dir).name.startswith("swarm-ray-"):
                shutil.rmtree(temp_dir, ignore_errors=True)
            self._ray = None
        if self._server is not None:
            with contextlib.suppress(Exception):
                stop_embedded(self.state_dir)
            self._server = None
        shutil.rmtree(self.scratch, ignore_errors=True)


def _named_actors() -> list[str]:
    import ray

    return [n for n in ray.util.list_named_actors() if n.startswith(("data-migrator-", "validator-", "coordinator"))]


def _wait_until(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


# --------------------------------------------------------------------------------------------------------------
# Tables and migrations
# --------------------------------------------------------------------------------------------------------------
def _unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def create_docs_table(
    dsn: str,
    table: str,
    rows: Sequence[tuple[int, str]] | Iterator[tuple[int, str]],
    *,
    seed: int = 7,
    chunk: int = 20_000,
) -> int:
    """A table shaped like the demo's (``id bigint`` key, ``content text``, legacy ``embedding vector(384)``).

    The legacy vectors are random unit vectors: a migration never reads them (only their checksum), and the
    validators that would compare them are off in these figures. Returns the row count.
    """
    from psycopg import sql

    from swarm.db import connect, register_vector

    rng = np.random.default_rng(seed)
    t = sql.Identifier(table)
    n = 0
    with connect(dsn) as conn:
        register_vector(conn)
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(t))
        conn.execute(
            sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, content text NOT NULL, embedding vector({}))").format(
                t, sql.Literal(DIM)
            )
        )
        it = iter(rows)
        with conn.cursor() as cur:
            while True:
                part = [r for _, r in zip(range(chunk), it, strict=False)]
                if not part:
                    break
                vecs = _unit_rows(rng, len(part))
                with (
                    conn.transaction(),
                    cur.copy(
                        sql.SQL("COPY {} (id, content, embedding) FROM STDIN WITH (FORMAT BINARY)").format(t)
                    ) as cp,
                ):
                    cp.set_types(["bigint", "text", "vector"])
                    for (i, text), v in zip(part, vecs, strict=True):
                        cp.write_row((i, text, v))
                n += len(part)
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(t))
    return n


@dataclass
class Run:
    """One ``orchestrate`` call, timed."""

    code: int
    migration_id: int | None
    rows: int
    wall_s: float  # the call, including the final status poll and the report
    to_finish_s: float | None  # from the call to the migration's finished_at (no poll granularity, no report)
    phases: dict[str, float]
    status: dict[str, Any]


def orchestrate_timed(
    cfg: Config, name: str, *, rehearse: bool = False, before: Callable[[], Any] | None = None
) -> Run:
    """``before()`` (e.g. ``init``) then ``orchestrate``; times from before ``before``."""
    from swarm import commands

    t0_wall, t0 = time.time(), time.perf_counter()
    if before is not None:
        before()
    code = commands.orchestrate(cfg, name, rehearse=rehearse, progress=False)
    wall = time.perf_counter() - t0
    st = commands.status(cfg)
    mid = st.get("id")
    finished, phases = _timeline(cfg, mid, t0_wall) if mid is not None else (None, {})
    return Run(
        code=code,
        migration_id=mid,
        rows=int(st.get("rows_done") or 0),
        wall_s=wall,
        to_finish_s=(finished - t0_wall) if finished else None,
        phases=phases,
        status=st,
    )


def _timeline(cfg: Config, mid: int, start: float) -> tuple[float | None, dict[str, float]]:
    """(finished_at as epoch seconds, seconds spent in each phase) from the migration's own records.

    ``preflight`` runs from ``start`` (epoch seconds) to the migration's record: checks, the swarm, the legacy
    checksum; ``plan`` is the DDL and the shards, ``planned`` the wait for the coordinator.
    """
    from swarm.db import connect, resolve_dsn

    with connect(resolve_dsn(cfg)) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM created_at), extract(epoch FROM finished_at) FROM swarm.migrations "
            "WHERE id = %s",
            [mid],
        ).fetchone()
        events = conn.execute(
            "SELECT extract(epoch FROM at), coalesce(detail->>'phase', kind) FROM swarm.events "
            "WHERE migration_id = %s AND kind IN ('state', 'planned') ORDER BY id",
            [mid],
        ).fetchall()
    if row is None:
        return None, {}
    created = float(row[0])
    finished = float(row[1]) if row[1] is not None else None
    phases: dict[str, float] = {"preflight": round(created - start, 3)}
    marks = [(created, "plan")] + [(float(at), str(p)) for at, p in events]
    for (a, name), (b, _) in zip(marks, marks[1:], strict=False):
        phases[name] = round(phases.get(name, 0.0) + b - a, 3)
    return finished, phases


# --------------------------------------------------------------------------------------------------------------
# 1. The embedder against sentence-transformers
# --------------------------------------------------------------------------------------------------------------
def fig_embed(lab: Lab) -> list[Result]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise SwarmError(
            f"the baseline needs the bench extra ({exc.name} missing): pip install -e '.[bench]'"
        ) from None
    from model.convert import minilm_source
    from model.embedder import DEFAULT_PACK_TOKENS, LlamaEmbedder

    sizes = lab.sizes
    threads = os.cpu_count() or 1
    q8, f16 = lab.models()
    texts, counts = lab.code_texts(sizes.embed_texts)
    tokens = sum(counts)
    e = lab.base.embedding
    torch.set_num_threads(threads)
    with minilm_source() as src:
        st = SentenceTransformer(str(src), device="cpu")
    st_max = st.max_seq_length
    # Both GGUFs the swarm ships: Q8_0 (the demo's new model, half the memory) and f16 (on AVX2 without
    # AVX-512, llama.cpp's f16 matrix products ran faster than its Q8_0 ones here). The figure is the faster.
    llamas = {
        name: LlamaEmbedder(path, cache_size=0, batch_size=e.batch_size, n_threads=threads, flash_attn=e.flash_attn)
        for name, path in (("Q8_0", q8), ("f16", f16))
    }
    try:
        # Warm every side (allocations, thread pools, first-call paths) on texts outside the measured set.
        warm = [d.content for d in lab.docs()[:32]]
        st.encode(warm, batch_size=ST_BATCH, normalize_embeddings=True)
        for ll in llamas.values():
            ll.embed(warm)
            ll.stats.reset()

        def time_st() -> tuple[float, np.ndarray]:
            t = time.perf_counter()
            v = st.encode(texts, batch_size=ST_BATCH, normalize_embeddings=True, convert_to_numpy=True)
            return time.perf_counter() - t, np.asarray(v, dtype=np.float32)

        def time_llama(name: str) -> tuple[float, np.ndarray]:
            t = time.perf_counter()
            v = llamas[name].embed(texts)
            return time.perf_counter() - t, v

        rounds = []
        vecs: dict[str, np.ndarray] = {}
        sides = ["st", *llamas]
        for i in range(sizes.embed_rounds):
            load = os.getloadavg()[0]
            took: dict[str, float] = {}
            for side in sides[i % len(sides) :] + sides[: i % len(sides)]:  # rotate who goes first
                took[side], vecs[side] = time_st() if side == "st" else time_llama(side)
            rounds.append(
                {
                    "st_s": round(took["st"], 3),
                    **{f"{n}_s": round(took[n], 3) for n in llamas},
                    **{f"ratio_{n}": round(took["st"] / took[n], 3) for n in llamas},
                    "load1": round(load, 2),
                }
            )
            log.info("bench.embed.round", **rounds[-1])
        per_model = {
            n: {
                "tokens_per_second": tokens / statistics.median(r[f"{n}_s"] for r in rounds),
                "ratio": statistics.median(r[f"ratio_{n}"] for r in rounds),
                "cosine_min_to_st": float(np.sum(vecs["st"] * vecs[n], axis=1).min()),
                "truncated": llamas[n].stats.truncated,
                "batches": llamas[n].stats.batches,
            }
            for n in llamas
        }
    finally:
        for ll in llamas.values():
            ll.close()
    best = max(per_model, key=lambda n: per_model[n]["ratio"])
    other = next(n for n in per_model if n != best)
    b = per_model[best]
    st_tps = tokens / statistics.median(r["st_s"] for r in rounds)
    notes = (
        f"{len(texts)} stdlib functions, {tokens / len(texts):.0f} tokens on average, {threads} threads each; "
        f"{best} GGUF (the faster; {other}: {per_model[other]['tokens_per_second']:,.0f} tokens/s, ratio "
        f"{per_model[other]['ratio']:.3f}), flash_attn={e.flash_attn}, micro-batches packing up to "
        f"{DEFAULT_PACK_TOKENS} tokens vs sentence-transformers "
        f"{_version('sentence-transformers')} (torch {torch.__version__}, fp32, batch {ST_BATCH}); "
        f"median of {len(rounds)} rotating rounds; cosine to sentence-transformers min {b['cosine_min_to_st']:.4f}"
    )
    return [
        Result(
            "embed_ratio_vs_sentence_transformers",
            b["tokens_per_second"],
            "tokens/s",
            Target(">=", 1.5, "ratio"),
            baseline=st_tps,
            baseline_label="sentence-transformers tokens/s",
            ratio=b["ratio"],
            ratio_label=f"llama.cpp {best} / sentence-transformers",
            notes=notes,
            details={
                "texts": len(texts),
                "tokens": tokens,
                "threads": threads,
                "rounds": rounds,
                "models": per_model,
                "figure_model": best,
                "st_max_seq_length": st_max,
                "st_batch_size": ST_BATCH,
                "llama_batch_size": e.batch_size,
                "flash_attn": e.flash_attn,
            },
        )
    ]


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


# --------------------------------------------------------------------------------------------------------------
# 2. + 3. The whole pipeline against the bare embedder; the migrators' memory
# --------------------------------------------------------------------------------------------------------------
def _plain_rows_per_second(cfg: Config, texts: list[str], warm: list[str]) -> tuple[float, dict[str, Any]]:
    """The migrator's embedder, built as the migrator builds it, on ``texts`` in the migrator's batches."""
    from model.embedder import LlamaEmbedder

    e = cfg.embedding
    threads = e.n_threads or os.cpu_count() or 1
    with LlamaEmbedder(
        str(cfg.path(e.model_path)),
        document_prefix=e.document_prefix,
        query_prefix=e.query_prefix,
        cache_size=e.cache_size,
        batch_size=e.batch_size,
        n_threads=threads,
        truncate_dim=e.truncate_dim,
        flash_attn=e.flash_attn,
        expected_dim=e.dimension,
    ) as emb:
        emb.embed_many(warm)
        emb.stats.reset()
        t = time.perf_counter()
        for i in range(0, len(texts), e.batch_size):
            emb.embed_many(texts[i : i + e.batch_size])
        seconds = time.perf_counter() - t
        stats = emb.stats.as_dict()
    return len(texts) / seconds, {"seconds": round(seconds, 2), "threads": threads, **stats}


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
    base_rps, base = _plain_rows_per_second(cfg, [r[1] for r in rows], [d.content for d in docs[n : n + 32]])
    lab.kill_swarm()
    run = orchestrate_timed(cfg, "bench: pipeline", before=lambda: commands.init(cfg))
    if run.code != 0 or run.rows != n:
        raise SwarmError(
            f"the migration ended with exit code {run.code}, {run.rows}/{n} rows: {run.status.get('reason')}"
        )
    assert run.to_finish_s is not None
    lab.shared["pipeline"] = {"infos": lab.migrator_infos(), "dsn": dsn, "cfg": cfg}
    nice = sorted({n for n in (_niceness(i["pid"]) for i in lab.shared["pipeline"]["infos"]) if n is not None})
    swarm_rps = n / run.to_finish_s
    sw = cfg.swarm
    from swarm.agents_ray import threads_per_migrator

    threads = threads_per_migrator(sw.threads_per_migrator, sw.migrators)
    notes = (
        f"{n} demo rows (stdlib functions); swarm: {sw.migrators} migrators (nice {nice}, Ray's default; this "
        f"process nice {os.getpriority(os.PRIO_PROCESS, 0)}) × {threads} llama.cpp threads, "
        f"shard_rows {sw.shard_rows}, batch {cfg.embedding.batch_size}, {sw.index} index built, no validators; "
        f"baseline: one LlamaEmbedder with {base['threads']} threads, same batches, in this process; "
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
            baseline_label="plain embedder rows/s",
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


def _niceness(pid: int) -> int | None:
    try:
        return os.getpriority(os.PRIO_PROCESS, pid)
    except OSError:
        return None


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


# --------------------------------------------------------------------------------------------------------------
# 4. Search through the ANN index
# --------------------------------------------------------------------------------------------------------------
IVFFLAT_PROBES = (1, 2, 3, 4, 6, 8, 10, 15, 20, 30, 40)
HNSW_EF_SEARCH = (10, 20, 40, 64, 100, 160, 250)


class EmbeddingLike:
    """Synthetic unit vectors with the statistics of real all-MiniLM-L6-v2 embeddings of code.

    Measured on 1,500 demo-corpus functions: a common direction of norm 0.49 (random pairs have cosine ~0.23),
    a covariance spectrum falling as ``(1 + i/8) ** -1.3`` (top 10 / 50 / 100 directions hold 28% / 62% / 80%
    of the variance; the model 30% / 64% / 78%), trace 0.76; median cosine to the nearest / 10th nearest
    neighbour 0.67 / 0.52. The model: topics (one per 10 rows) drawn with 47% of that spectrum, rows around
    them with the other 53%, in a random basis; which gives 0.68 / 0.52 at the same sample size. (A single
    Gaussian with that spectrum gives 0.51 / 0.45: no neighbourhood structure, far harder than real text.)
    """

    SPREAD = 0.53

    def __init__(self, rng: np.random.Generator, topics: int, dim: int = DIM) -> None:
        q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        i = np.arange(1, dim + 1)
        lam = (1 + i / 8) ** -1.3
        self.scale = np.sqrt(lam * 0.76 / lam.sum()).astype(np.float32)
        self.basis = q.astype(np.float32)
        mean = rng.standard_normal(dim)
        self.mean = (0.49 * mean / np.linalg.norm(mean)).astype(np.float32)
        self.topics = rng.standard_normal((topics, dim)).astype(np.float32) * self.scale * math.sqrt(1 - self.SPREAD)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        out = np.empty((n, len(self.mean)), dtype=np.float32)
        for start in range(0, n, 20_000):
            m = min(20_000, n - start)
            which = rng.integers(0, len(self.topics), m)
            noise = rng.standard_normal((m, len(self.mean))).astype(np.float32) * self.scale * math.sqrt(self.SPREAD)
            v = self.mean + (self.topics[which] + noise) @ self.basis.T
            out[start : start + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
        return out


def exact_top_k(data: np.ndarray, queries: np.ndarray, k: int, ids: np.ndarray) -> list[list[int]]:
    """Ids of the ``k`` nearest rows by cosine distance (rows and queries are unit vectors)."""
    out = []
    for start in range(0, len(queries), 64):
        sims = queries[start : start + 64] @ data.T
        part = np.argpartition(-sims, k, axis=1)[:, :k]
        for row, cand in zip(sims, part, strict=True):
            out.append([int(ids[j]) for j in cand[np.argsort(-row[cand])]])
    return out


def _time_queries(
    conn: psycopg.Connection, q: Any, queries: np.ndarray, k: int, ann: Any = None
) -> tuple[list[float], list[list[int]]]:
    """Each query through ``router.run_search``, the router's own path: with ``ann`` (``AnnSettings``), its
    ``SET LOCAL``s and the search in one transaction, round trips included."""
    from swarm.router import run_search

    lat, found = [], []
    for v in queries:
        t = time.perf_counter()
        rows = run_search(conn, q, v, k, ann)
        lat.append((time.perf_counter() - t) * 1000)
        found.append([int(r[0]) for r in rows])
    return lat, found


def fig_search(lab: Lab) -> list[Result]:
    """Recall@10 and p95 of the new column's search, with the index and the settings the swarm is configured with
    (``[swarm]`` of the bench's config: ``index``, ``hnsw_m``, ``hnsw_ef_construction``, ``ef_search``,
    ``probes``, ``index_build_memory_mb``); ``ef_search`` and ``probes`` swept alongside."""
    from swarm import migration as mig
    from swarm.db import connect, register_vector
    from swarm.router import AnnSettings
    from swarm.sql import Target as Table

    s = lab.sizes
    conf = lab.base.swarm
    configured = AnnSettings.of(lab.base)
    k = 10
    rng = np.random.default_rng(20261126)
    shape = EmbeddingLike(rng, topics=max(1, s.search_rows // 10))
    data = shape.sample(rng, s.search_rows)
    queries = shape.sample(rng, s.search_queries)
    ids = np.arange(1, s.search_rows + 1)
    truth = exact_top_k(data, queries, k, ids)

    dsn = lab.database("bench_search")
    table = Table("vectors", "id", "content", "embedding", "v")
    conn = connect(dsn)
    try:
        register_vector(conn)
        conn.execute(f"CREATE TABLE vectors (id bigint PRIMARY KEY, v vector({DIM}))")
        with conn.cursor() as cur, cur.copy("COPY vectors (id, v) FROM STDIN WITH (FORMAT BINARY)") as cp:
            cp.set_types(["bigint", "vector"])
            for i, v in zip(ids, data, strict=True):
                cp.write_row((int(i), v))
        conn.execute("VACUUM ANALYZE vectors")
        q = table.search("v", "vector", DIM)
        # Baseline: exact search (no index yet), which also checks the ground truth.
        exact_lat, exact_found = _time_queries(conn, q, queries[: s.search_exact_queries], k)
        exact_lat, exact_found = _time_queries(conn, q, queries[: s.search_exact_queries], k)  # warm
        exact_recall = recall_at_k(exact_found, truth[: s.search_exact_queries], k)
        exact_p95 = percentile(exact_lat, 95)

        sweeps: dict[str, list[dict[str, Any]]] = {}
        builds: dict[str, dict[str, Any]] = {}
        headline: dict[str, Any] | None = None
        lists = mig.ivfflat_lists(s.search_rows)
        memory = f"{conf.index_build_memory_mb}MB"
        for method, setting, values, params in (
            ("ivfflat", "ivfflat.probes", IVFFLAT_PROBES, {"lists": lists}),
            (
                "hnsw",
                "hnsw.ef_search",
                HNSW_EF_SEARCH,
                {"m": conf.hnsw_m, "ef_construction": conf.hnsw_ef_construction},
            ),
        ):
            # The index as swarm builds it at the end of a migration (migration.build_index): Target.create_index
            # with the configured parameters, in a session with the configured maintenance_work_mem.
            mid = 1 if method == "ivfflat" else 2
            conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", [memory])
            t = time.perf_counter()
            create: Any = table.create_index(
                mid,
                method,
                "vector_cosine_ops",
                params.get("lists"),
                m=params.get("m"),
                ef_construction=params.get("ef_construction"),
            )
            conn.execute(create)
            builds[method] = {"seconds": round(time.perf_counter() - t, 1), **params, "maintenance_work_mem": memory}
            conn.execute("RESET maintenance_work_mem")
            plan = "\n".join(r[0] for r in conn.execute(sql_explain(q), [queries[0], queries[0], k]).fetchall())
            builds[method]["uses_index"] = table.index_name(mid) in plan
            _time_queries(conn, q, queries, k, configured)  # warm the index's pages
            if method == conf.index:
                # The headline: the swarm's own settings, exactly as its router searches.
                lat, found = _time_queries(conn, q, queries, k, configured)
                headline = {
                    "index": method,
                    "setting": setting,
                    "value": configured.ef_search if method == "hnsw" else configured.probes,
                    "recall_at_10": round(recall_at_k(found, truth, k), 4),
                    "p50_ms": round(percentile(lat, 50), 3),
                    "p95_ms": round(percentile(lat, 95), 3),
                }
                log.info("bench.search.configured", **headline)
            sweep = []
            for value in values:
                if method == "ivfflat" and value > lists:
                    break
                ann = (
                    AnnSettings(value, configured.probes)
                    if method == "hnsw"
                    else AnnSettings(configured.ef_search, value)
                )
                lat, found = _time_queries(conn, q, queries, k, ann)
                rec = recall_at_k(found, truth, k)
                sweep.append(
                    {
                        "setting": setting,
                        "value": value,
                        "recall_at_10": round(rec, 4),
                        "p50_ms": round(percentile(lat, 50), 3),
                        "p95_ms": round(percentile(lat, 95), 3),
                    }
                )
                log.info("bench.search", method=method, **sweep[-1])
                if rec >= 0.99:
                    break
            sweeps[method] = sweep
            drop: Any = table.drop_index(mid)
            conn.execute(drop)
    finally:
        conn.close()

    if headline is None:  # [swarm].index = "none": swarm searches exactly
        headline = {
            "index": "none",
            "setting": "none",
            "value": None,
            "recall_at_10": round(exact_recall, 4),
            "p50_ms": round(percentile(exact_lat, 50), 3),
            "p95_ms": round(exact_p95, 3),
        }
    before = next(p for p in sweeps["ivfflat"] if p["value"] == 1)  # swarm before #5: ivfflat, no probes set
    good = [dict(p, index=m) for m, sw in sweeps.items() for p in sw if p["recall_at_10"] >= 0.95]
    fastest = min(good, key=lambda p: p["p95_ms"]) if good else None
    which = f"{headline['index']}, {headline['setting']} = {headline['value']}" if headline["value"] else "exact search"
    others = "; ".join(
        f"{m}: " + ", ".join(f"{p['value']}→{p['recall_at_10']:.3f}/{p['p95_ms']:.1f}ms" for p in sw)
        for m, sw in sweeps.items()
    )
    common = (
        f"{s.search_rows:,} synthetic 384-dim unit vectors shaped like MiniLM code embeddings (EmbeddingLike), "
        f"{s.search_queries} held-out queries, k=10, swarm's search through the router's path with the configured "
        f"[swarm] settings (ivfflat lists={lists}; hnsw m={conf.hnsw_m}, ef_construction={conf.hnsw_ef_construction})"
    )
    details = {
        "configured": headline,
        "sweeps": sweeps,
        "builds": builds,
        "exact_p95_ms": round(exact_p95, 3),
        "exact_p50_ms": round(percentile(exact_lat, 50), 3),
        "exact_recall_vs_numpy": round(exact_recall, 4),
        "fastest_in_sweep_with_recall_0_95": fastest,
        "before_ivfflat_probes_1": before,
    }
    return [
        Result(
            "search_p95_ms",
            headline["p95_ms"],
            "ms",
            Target("<=", 10),
            baseline=exact_p95,
            baseline_label="exact search p95 ms",
            ratio=ratio(headline["p95_ms"], exact_p95),
            notes=f"configured: {which} (recall@10 {headline['recall_at_10']:.3f}); {common}",
            details=details,
        ),
        Result(
            "search_recall_at_10",
            headline["recall_at_10"],
            "",
            Target(">=", 0.95),
            baseline=before["recall_at_10"],
            baseline_label="swarm before #5: ivfflat, ivfflat.probes = 1",
            ratio=ratio(headline["recall_at_10"], before["recall_at_10"]),
            notes=f"configured: {which} (p95 {headline['p95_ms']:.2f} ms); sweep recall→p95: {others}",
            details={"configured": headline},
        ),
    ]


def sql_explain(q: Any) -> Any:
    from psycopg import sql

    return sql.SQL("EXPLAIN ") + q


# --------------------------------------------------------------------------------------------------------------
# 5. The cache on a table of repeated contents
# --------------------------------------------------------------------------------------------------------------
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
            "misses": sum(i["cache_misses"] for i in infos),
            "tokens_embedded": sum(i["tokens"] for i in infos),
            "migrators": len(infos),
            "cache_size": cache_size,
        }
    lab.kill_swarm()
    c, u = runs["cached"], runs["uncached"]
    lookups = c["hits"] + c["misses"]
    hit_rate = c["hits"] / lookups if lookups else 0.0
    best = 1 - s.cache_unique / n
    avoided = 1 - c["tokens_embedded"] / all_tokens if all_tokens else 0.0
    saved = u["seconds"] - c["seconds"]
    notes = (
        f"{n} rows, {s.cache_unique} distinct contents × {s.cache_copies} in random order (best possible "
        f"{best:.2f}); {c['migrators']} migrators (own LRU + the swarm's shared cache); "
        f"model work avoided {avoided:.1%} of tokens; "
        f"time {c['seconds']:.1f} s vs {u['seconds']:.1f} s with cache_size = 0: {saved:.1f} s saved "
        f"({saved / u['seconds']:.0%})"
    )
    return [
        Result(
            "cache_hit_rate",
            hit_rate,
            "",
            Target(">=", 0.9),
            baseline=u["seconds"],
            baseline_label="s, same migration with cache_size = 0",
            ratio=ratio(c["seconds"], u["seconds"]),
            ratio_label="time with cache / without",
            notes=notes,
            details={
                "runs": runs,
                "rows": n,
                "distinct": s.cache_unique,
                "tokens_all_rows": all_tokens,
                "tokens_avoided_fraction": round(avoided, 4),
                "best_possible_hit_rate": best,
                "seconds_saved": round(saved, 2),
            },
        )
    ]


# --------------------------------------------------------------------------------------------------------------
# 6. The swarm's own cost per row, by table size (rehearsal: stand-in model, real swarm and writes)
# --------------------------------------------------------------------------------------------------------------
def fig_overhead(lab: Lab) -> list[Result]:
    from swarm import commands

    sizes = lab.sizes.overhead_rows
    docs = [d.content for d in lab.docs()]
    dsn = lab.database("bench_overhead")
    seeded: dict[int, float] = {}
    for n in sizes:
        t = time.perf_counter()
        create_docs_table(dsn, f"rows_{n}", ((i, docs[i % len(docs)]) for i in range(1, n + 1)), seed=n)
        seeded[n] = round(time.perf_counter() - t, 1)
    cfg0 = lab.config(dsn, f"rows_{sizes[0]}")
    lab.kill_swarm()
    t = time.perf_counter()
    commands.init(cfg0)
    commands.spawn(cfg0, "data-migrator", cfg0.swarm.migrators, rehearse=True)
    spawn_s = time.perf_counter() - t
    runs: dict[int, Run] = {}
    for n in sizes:
        cfg = lab.config(dsn, f"rows_{n}")
        runs[n] = orchestrate_timed(cfg, f"bench: rehearsal {n}", rehearse=True)
        r = runs[n]
        if r.code != 0 or r.rows != n:
            raise SwarmError(f"the {n}-row rehearsal ended with exit code {r.code}, {r.rows}/{n} rows")
        log.info("bench.overhead", rows=n, seconds=r.to_finish_s, phases=r.phases)
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
                Target("within", 0.25, "ratio"),
                baseline=per_row[base_n],
                baseline_label=f"µs per row at {_short(base_n)}",
                ratio=ratio(per_row[n], per_row[base_n]),
                ratio_label=f"vs {_short(base_n)}",
                notes=(
                    f"orchestrate --rehearse on {n:,} rows with the swarm up ({sw.migrators} migrators, shard_rows "
                    f"{sw.shard_rows}, batch {cfg0.embedding.batch_size}): {r.to_finish_s or r.wall_s:.1f} s to "
                    f"finished_at, backfill {back:.1f} s ({back / n * 1e6:.0f} µs/row)"
                ),
                details={
                    "rows": n,
                    "seconds_to_finish": r.to_finish_s,
                    "orchestrate_wall_s": round(r.wall_s, 2),
                    "phases": r.phases,
                    "seed_seconds": seeded[n],
                    "spawn_seconds": round(spawn_s, 1),
                    "backfill_us_per_row": round(back / n * 1e6, 2),
                },
            )
        )
    return out


def _short(n: int) -> str:
    return (
        f"{n // 1_000_000}M"
        if n >= 1_000_000 and n % 1_000_000 == 0
        else (f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n))
    )


# --------------------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------------------
RUNNERS: dict[str, Callable[[Lab], list[Result]]] = {
    "embed": fig_embed,
    "pipeline": fig_pipeline,
    "rss": fig_rss,
    "search": fig_search,
    "cache": fig_cache,
    "overhead": fig_overhead,
}
TARGETS = {
    "embed": [("embed_ratio_vs_sentence_transformers", Target(">=", 1.5, "ratio"))],
    "pipeline": [("pipeline_efficiency", Target(">=", 0.90, "ratio"))],
    "rss": [("migrator_rss_mb", Target("<=", 400))],
    "search": [("search_p95_ms", Target("<=", 10)), ("search_recall_at_10", Target(">=", 0.95))],
    "cache": [("cache_hit_rate", Target(">=", 0.9))],
    "overhead": [("overhead_per_row_us", Target("within", 0.25, "ratio"))],
}


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, memory, OS, versions and load: printed with every result."""
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
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": mem,
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "llama_cpp": _version("llama-cpp-python"),
        "ray": _version("ray"),
        "torch": _version("torch"),
        "sentence_transformers": _version("sentence-transformers"),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def run(cfg: Config, *, only: list[str] | None, quick: bool, out_dir: str | os.PathLike[str] | None = None) -> int:
    """Run the selected figures (all by default) and write ``bench/results.json`` and ``results.md``.

    Returns 0 when every figure was measured and met its target, 1 otherwise. ``out_dir`` defaults to
    ``bench/`` under the project root.
    """
    figures = select_figures(only)
    sizes = Sizes.quick() if quick else Sizes()
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
            t = time.perf_counter()
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
    return EXIT_OK if results and all(r.passed for r in results) else EXIT_FAILED


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
