"""``python -m swarm demo seed``: the ``documents`` table from real standard-library code.

The legacy column is filled with all-MiniLM-L6-v2 (the seed's "before" model) through its f16 GGUF, and an
ivfflat index is built on it, as a production table would have. Queries with their relevant ids go to
``.swarm/demo_queries.jsonl`` and to the ``demo_queries`` table, sliced by the length of the function that
answers them (:func:`length_slice`), so validation gates short, medium and long code each on its own.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psycopg import sql

from swarm.core.errors import ConfigError
from swarm.core.log import get_logger
from swarm.ops import corpus
from swarm.store.db import connect, ensure_vector, one, register_vector
from swarm.store.embedded import resolve_dsn
from swarm.store.sql import split_table, table_ident

if TYPE_CHECKING:
    from swarm.core.config import Config

log = get_logger()

#: Upper bounds (characters of content) of the demo's slices; about a third of the queries each.
SLICES = ((150, "short"), (400, "medium"))


def length_slice(content: str) -> str:
    """The demo query set's slice of a query: the content length bucket of the row that answers it."""
    return next((name for bound, name in SLICES if len(content) < bound), "long")


def seed(
    cfg: Config,
    *,
    limit: int | None = None,
    n_queries: int = 600,
    force: bool = False,
    progress: bool = True,
    batch: int = 64,
) -> dict[str, Any]:
    """Create and fill the demo table; idempotent unless ``force``. Returns what it did."""
    from model.factory import embedder_for

    db = cfg.database
    if split_table(db.table)[0] is not None:
        raise ConfigError("database.table", db.table, "the demo seeds an unqualified table; use e.g. documents")
    queries_path = cfg.path(cfg.validation.queries)
    dsn = resolve_dsn(cfg)
    conn = connect(dsn)
    ensure_vector(conn)
    register_vector(conn)
    t = table_ident(db.table)
    ids = dict(
        t=t,
        id=sql.Identifier(db.id_column),
        content=sql.Identifier(db.content_column),
        legacy=sql.Identifier(db.legacy_column),
    )
    exists = one(conn.execute("SELECT to_regclass(%s)", [db.table]).fetchone(), "the table's regclass")[0]
    if exists and not force:
        n = one(
            conn.execute(sql.SQL("SELECT count(*), count({legacy}) FROM {t}").format(**ids)).fetchone(),
            "the table's row counts",
        )
        if n[0] > 0 and n[0] == n[1] and queries_path.exists():
            return {"table": db.table, "rows": n[0], "queries": _count_lines(queries_path), "created": False}

    docs, candidates = corpus.build(limit=limit)
    queries = corpus.pick_queries(candidates, n_queries)
    embedder = embedder_for(cfg, "legacy", cache_size=0)
    dim = embedder.dim

    with conn.transaction():
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {t} CASCADE").format(t=t))
        conn.execute("DROP TABLE IF EXISTS demo_queries")
        conn.execute(
            sql.SQL(
                "CREATE TABLE {t} ({id} bigint PRIMARY KEY, {content} text NOT NULL, name text, {legacy} vector({dim}))"
            ).format(dim=sql.Literal(dim), **ids)
        )
        conn.execute(
            "CREATE TABLE demo_queries (id int PRIMARY KEY, query text NOT NULL, relevant_ids bigint[], slice text)"
        )

    started = time.monotonic()
    bar = _progress(progress, len(docs))
    try:
        for i in range(0, len(docs), batch):
            chunk = docs[i : i + batch]
            vecs = embedder.embed([d.content for d in chunk])
            with conn.transaction(), conn.cursor() as cur:
                copy_sql = sql.SQL("COPY {t} ({id}, {content}, name, {legacy}) FROM STDIN WITH (FORMAT BINARY)")
                with cur.copy(copy_sql.format(**ids)) as cp:
                    cp.set_types(["bigint", "text", "text", "vector"])
                    for d, v in zip(chunk, vecs, strict=True):
                        cp.write_row((d.id, d.content, d.name, v))
            if bar:
                bar[0].update(bar[1], advance=len(chunk))
    finally:
        if bar:
            bar[0].stop()
    seconds = time.monotonic() - started

    with conn.transaction(), conn.cursor() as cur:
        with cur.copy("COPY demo_queries (id, query, relevant_ids, slice) FROM STDIN") as cp:
            for qid, q in enumerate(queries, 1):
                cp.write_row((qid, q.query, [q.id], length_slice(q.content)))
    lists = max(1, len(docs) // 1000)
    conn.execute(
        sql.SQL(
            "CREATE INDEX IF NOT EXISTS {ix} ON {t} USING ivfflat ({legacy} vector_cosine_ops) WITH (lists = {n})"
        ).format(ix=sql.Identifier(f"{db.table}_{db.legacy_column}_idx"), n=sql.Literal(lists), **ids)
    )
    conn.execute(sql.SQL("ANALYZE {t}").format(t=t))
    queries_path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    for q in queries:
        buf.write(json.dumps({"query": q.query, "relevant_ids": [q.id], "slice": length_slice(q.content)}) + "\n")
    tmp = queries_path.with_suffix(".tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    tmp.replace(queries_path)
    conn.close()
    stats = embedder.stats
    log.info("demo.seeded", rows=len(docs), queries=len(queries), seconds=round(seconds, 1))
    return {
        "table": db.table,
        "rows": len(docs),
        "queries": len(queries),
        "queries_file": str(queries_path),
        "created": True,
        "seconds": round(seconds, 1),
        "tokens": getattr(stats, "tokens", None),
        "truncated": getattr(stats, "truncated", None),
    }


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for _ in f)


def _progress(enabled: bool, total: int) -> tuple[Any, Any] | None:
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    p = Progress(
        TextColumn("seeding legacy embeddings"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=False,
    )
    p.start()
    return p, p.add_task("seed", total=total)
