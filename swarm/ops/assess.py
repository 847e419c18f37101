"""Phase 1, ``python -m swarm assess``: what migrating this table will take, measured. It changes nothing.

The connection is read-only (``default_transaction_read_only``), so not even the bookkeeping schema is
created. Reported:

* the table: rows, table and index sizes, the legacy column's type, dimension and indexes;
* content length in the **new** model's tokens (its tokenizer, its prefix, its special tokens): distribution
  and how many rows exceed its context (they will be truncated);
* the new model's throughput on a random sample of real rows, with the threads a migrator will get, and the
  time estimate for the whole table with the configured swarm (migrators on this machine's cores);
* legacy search latency p50/p95 over the query set and, when it has labels, legacy MRR@10, nDCG@10, recall@k.

Printed as a table and written to ``reports/assessment.json`` and ``reports/assessment.md``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from psycopg import sql

from swarm import migration as mig
from swarm.core.config import threads_per_migrator
from swarm.core.errors import ConfigError
from swarm.core.log import get_logger
from swarm.quality import Hit, load_queries, sample, summarize
from swarm.store.db import connect, one, register_vector
from swarm.store.embedded import resolve_dsn
from swarm.store.sql import regclass_text

if TYPE_CHECKING:
    import psycopg

    from swarm.core.config import Config

log = get_logger()

#: Rows tokenized for the length distribution (all rows of a smaller table).
TOKENIZE_ROWS = 20_000


def _sizes(conn: psycopg.Connection, cfg: Config) -> dict[str, Any]:
    schema, table = cfg.database.table.split(".", 1) if "." in cfg.database.table else (None, cfg.database.table)
    reg = regclass_text(schema, table)
    total, heap, idx = one(
        conn.execute(
            "SELECT pg_total_relation_size(to_regclass(%s)), pg_table_size(to_regclass(%s)), "
            "pg_indexes_size(to_regclass(%s))",
            [reg, reg, reg],
        ).fetchone(),
        "the table's sizes",
    )
    indexes = conn.execute(
        "SELECT c.relname, am.amname, pg_relation_size(c.oid), pg_get_indexdef(c.oid), "
        "array_agg(a.attname ORDER BY a.attnum) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_am am ON am.oid = c.relam LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(%s) GROUP BY 1, 2, 3, 4 ORDER BY 1",
        [reg],
    ).fetchall()
    return {
        "total_bytes": int(total),
        "table_bytes": int(heap),
        "index_bytes": int(idx),
        "indexes": [
            {"name": n, "method": am, "bytes": int(b), "definition": d, "columns": list(cols or [])}
            for n, am, b, d, cols in indexes
        ],
    }


def _sample_rows(conn: psycopg.Connection, cfg: Config, n: int) -> list[str]:
    d = cfg.database
    from swarm.store.sql import table_ident

    rows = conn.execute(
        sql.SQL("SELECT {c} FROM {t} WHERE {c} IS NOT NULL ORDER BY random() LIMIT %s").format(
            c=sql.Identifier(d.content_column), t=table_ident(d.table)
        ),
        [int(n)],
    ).fetchall()
    return [r[0] for r in rows if r[0] and r[0].strip()]


def _pct(values: list[int] | np.ndarray, qs: tuple[int, ...] = (50, 90, 95, 99)) -> dict[str, float]:
    arr = np.asarray(values)
    if not arr.size:
        return {}
    out = {f"p{q}": float(np.percentile(arr, q)) for q in qs}
    return {"min": int(arr.min()), **out, "max": int(arr.max()), "mean": round(float(arr.mean()), 1)}


def assess(
    cfg: Config, *, sample_rows: int = 256, out_dir: str | Path | None = None, progress: Any = None
) -> dict[str, Any]:
    """Measure everything above; returns the assessment and writes it under ``reports/``."""
    from model.factory import embedder_for

    say = progress or (lambda _msg: None)
    dsn = resolve_dsn(cfg)
    conn = connect(dsn, application_name="swarm:assess")
    conn.execute("SET default_transaction_read_only = on")
    try:
        register_vector(conn)
    except Exception:  # noqa: BLE001 (no pgvector: inspect_table says what is wrong)
        pass
    started = time.monotonic()
    say("reading the table")
    info = mig.inspect_table(conn, cfg)
    if info.legacy_dim is None:
        raise ConfigError(
            "database.legacy_column",
            cfg.database.legacy_column,
            f"is {info.legacy_type}, not a vector column",
        )
    target = mig.target_for(cfg, info.key_type)
    rows = int(one(conn.execute(target.count_rows()).fetchone(), "the count of the table's rows")[0])
    sizes = _sizes(conn, cfg)
    legacy_ix = [ix for ix in sizes["indexes"] if cfg.database.legacy_column in ix["columns"]]

    # -- the new model: tokens and throughput ------------------------------------------------------------
    e = cfg.embedding
    threads = threads_per_migrator(cfg.swarm.threads_per_migrator, cfg.swarm.migrators)
    say(f"loading {e.model_path}")
    new = embedder_for(cfg, "new", n_threads=threads, cache_size=0)
    context = new.info.context_length or new.max_tokens
    say("tokenizing content")
    texts = _sample_rows(conn, cfg, min(rows, TOKENIZE_ROWS))
    lengths = np.array([len(new.tokenize(e.document_prefix + t)) for t in texts], dtype=np.int64)
    over = int((lengths > new.max_tokens).sum())
    scale = rows / len(texts) if texts else 0.0
    say(f"embedding {min(sample_rows, len(texts))} sample rows")
    sample_texts = texts[:sample_rows]
    new.embed(sample_texts[:4])  # warm-up: first-call allocations are not throughput
    new.stats.reset()
    t0 = time.perf_counter()
    new.embed(sample_texts)
    secs = time.perf_counter() - t0
    per_migrator = len(sample_texts) / secs if secs > 0 else None
    cores = os.cpu_count() or 1
    # Migrators on one machine share its cores: beyond cores/threads of them they only take turns.
    parallel = min(cfg.swarm.migrators, max(1.0, cores / threads))
    swarm_rate = per_migrator * parallel if per_migrator else None
    new.close()

    # -- the legacy arm: latency and quality ---------------------------------------------------------------
    legacy: dict[str, Any] = {"type": info.legacy_type, "dimension": info.legacy_dim, "indexes": legacy_ix}
    qpath = cfg.path(cfg.validation.queries)
    try:
        queries = sample(load_queries(qpath), cfg.validation.sample_queries, seed=0)
        query_source = str(qpath)
    except ConfigError:
        # No query set: search with the first lines of real rows, for latency only.
        from swarm.quality import Query

        queries = [Query(t.strip().splitlines()[0][:200]) for t in texts[:50] if t.strip()]
        query_source = "first lines of sampled rows (no query set: latency only)"
    lpath = cfg.path(cfg.legacy.model_path)
    if lpath.exists() and queries:
        say(f"searching the legacy column with {len(queries)} queries")
        lemb = embedder_for(cfg, "legacy", cache_size=0)
        q = target.search(cfg.database.legacy_column, str(info.legacy_type), info.legacy_dim)
        hits = []
        for query in queries:
            h = Hit()
            t1 = time.perf_counter()
            vec = lemb.embed([query.text], query=True)[0]
            t2 = time.perf_counter()
            h.ids = [r[0] for r in conn.execute(q, [vec, vec, cfg.validation.k]).fetchall()]
            h.embed_ms, h.search_ms = (t2 - t1) * 1000, (time.perf_counter() - t2) * 1000
            hits.append(h)
        lemb.close()
        legacy["search"] = summarize(queries, hits, cfg.validation.k).as_dict()
        legacy["queries_from"] = query_source
    else:
        legacy["search"] = None
        legacy["queries_from"] = f"skipped: {lpath} not found" if not lpath.exists() else "no queries"
    conn.close()

    result = {
        "table": cfg.database.table,
        "rows": rows,
        "sizes": sizes,
        "legacy_column": {"name": cfg.database.legacy_column, **legacy},
        "new_model": {
            "path": str(cfg.path(e.model_path)),
            "model": e.model,
            "dimension": new.dim,
            "context": context,
            "max_tokens": new.max_tokens,
            "pooling": new.info.pooling,
            "prefix": e.document_prefix,
        },
        "tokens": {
            "rows_tokenized": len(texts),
            "sampled": len(texts) < rows,
            **_pct(lengths),
            "rows_over_context": over,
            "rows_over_context_estimate": int(round(over * scale)),
            "share_over_context": round(over / len(texts), 4) if len(texts) else 0.0,
        },
        "throughput": {
            "sample_rows": len(sample_texts),
            "seconds": round(secs, 3),
            "threads_per_migrator": threads,
            "rows_per_second_per_migrator": _sig(per_migrator),
            "tokens_per_second_per_migrator": round(new.stats.tokens / secs, 1) if secs > 0 else None,
            "migrators": cfg.swarm.migrators,
            "cores": cores,
            "rows_per_second_swarm": _sig(swarm_rate),
            "estimated_seconds": round(rows / swarm_rate, 3) if swarm_rate else None,
        },
        "seconds": round(time.monotonic() - started, 1),
    }
    paths = write(cfg, result, out_dir)
    result["reports"] = paths
    return result


# ------------------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------------------
def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _dur(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.0f} s"
    return f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def rows_of(a: dict[str, Any]) -> list[tuple[str, str]]:
    """The assessment as (label, value) lines: the printed table and the Markdown table."""
    lc, tok, tp = a["legacy_column"], a["tokens"], a["throughput"]
    out = [
        ("table", a["table"]),
        ("rows", f"{a['rows']:,}"),
        (
            "size",
            f"{_mb(a['sizes']['total_bytes'])} total, {_mb(a['sizes']['table_bytes'])} table, "
            f"{_mb(a['sizes']['index_bytes'])} indexes",
        ),
        ("legacy column", f"{lc['name']} {lc['type']}({lc['dimension']})"),
        (
            "legacy index",
            ", ".join(f"{ix['name']} ({ix['method']}, {_mb(ix['bytes'])})" for ix in lc["indexes"]) or "none",
        ),
        (
            "new model",
            f"{a['new_model']['model']}: {a['new_model']['dimension']} dims, context "
            f"{a['new_model']['context']} tokens, {a['new_model']['pooling']} pooling",
        ),
        (
            "content tokens",
            f"p50 {tok.get('p50', 0):.0f}, p95 {tok.get('p95', 0):.0f}, p99 {tok.get('p99', 0):.0f}, "
            f"max {tok.get('max', 0)} ({tok['rows_tokenized']:,} rows{' sampled' if tok['sampled'] else ''})",
        ),
        (
            "over context",
            f"{tok['rows_over_context']:,} rows ({tok['share_over_context']:.1%}) will be truncated"
            + (f", ~{tok['rows_over_context_estimate']:,} in the table" if tok["sampled"] else ""),
        ),
        (
            "throughput",
            f"{tp['rows_per_second_per_migrator'] or '-'} rows/s per migrator "
            f"({tp['threads_per_migrator']} threads, {tp['sample_rows']} real rows)",
        ),
        (
            "estimate",
            f"{_dur(tp['estimated_seconds'])} for {a['rows']:,} rows with {tp['migrators']} migrator(s) "
            f"({tp['rows_per_second_swarm'] or '-'} rows/s on {tp['cores']} cores)",
        ),
    ]
    s = lc.get("search")
    if s:
        out.append(
            (
                "legacy latency",
                f"search p50 {s['search_p50_ms']:.2f} ms, p95 {s['search_p95_ms']:.2f} ms; "
                f"with query embedding p95 {s['latency_p95_ms']:.1f} ms",
            )
        )
        if s.get("mrr_at_10") is not None:
            out.append(
                (
                    "legacy quality",
                    f"MRR@10 {s['mrr_at_10']:.3f}, nDCG@10 {s['ndcg_at_10']:.3f}, "
                    f"recall@{s['k']} {s['recall_at_k']:.3f} ({s['labelled']} labelled queries)",
                )
            )
    else:
        out.append(("legacy search", lc.get("queries_from", "-")))
    return out


def _sig(x: float | None, digits: int = 4) -> float | None:
    """``x`` to ``digits`` significant figures (a rate of 0.37 rows/s keeps its precision as well as 3,700)."""
    return float(f"{x:.{digits}g}") if x else None


def render(a: dict[str, Any]) -> str:
    """The printed table."""
    lines = rows_of(a)
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in lines)


def write(cfg: Config, a: dict[str, Any], out_dir: str | Path | None = None) -> dict[str, str]:
    out = Path(out_dir) if out_dir else cfg.path("reports")
    out.mkdir(parents=True, exist_ok=True)
    jp, mp = out / "assessment.json", out / "assessment.md"
    jp.write_text(json.dumps(a, indent=2, default=str), encoding="utf-8")
    md = [f"# Assessment of `{a['table']}`", "", "| | |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in rows_of(a)]
    md += ["", "Measured by `python -m swarm assess`; nothing was changed."]
    mp.write_text("\n".join(md) + "\n", encoding="utf-8")
    return {"json": str(jp), "markdown": str(mp)}
