"""The search record: per minute, per migration, source, arm and share, how many searches, how many failed,
and fixed latency histograms (``swarm.query_rollup``).

Routers never write a row per search. Each one adds its searches to counters in memory
(:class:`swarm.serving.recorder.Recorder`) and upserts them here about once a second; a minute's row for a key
is updated in place (``INSERT ... ON CONFLICT DO UPDATE``, which serializes concurrent writers of the same key
on its row lock, so two routers adding to one minute both count).

Percentiles come back from the histograms as Prometheus' ``histogram_quantile`` computes them: find the bucket
that holds the rank, interpolate linearly inside it (the first bucket starts at 0; a rank in the open last
bucket reads as the highest finite bound). The bounds (:data:`BOUNDS_MS`) are fixed: they are the layout of
the arrays, so changing them means a new table. Latency histograms count successful searches only, as the
gates and alerts always have.

Rows older than ``rollout.query_log_days`` are deleted by the routers' flushers (:func:`retention`), as are rows
of the per-search ``swarm.query_log`` that earlier versions wrote.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from swarm.store.db import one

#: Upper bounds (ms) of the latency buckets; a last, open bucket holds the rest.
BOUNDS_MS: tuple[float, ...] = (
    0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000, 10000,
)  # fmt: skip
NBUCKETS = len(BOUNDS_MS) + 1
KEY = ("minute", "migration_id", "source", "arm", "percent")
COUNTS = ("seen", "queries", "errors", "dropped", "cache_hits", "cache_known")
SUMS = ("latency_sum_ms", "search_sum_ms", "embed_sum_ms")
HISTS = ("latency_hist", "search_hist", "embed_hist")

DDL = [
    """CREATE TABLE IF NOT EXISTS swarm.query_rollup (
        minute          timestamptz NOT NULL,
        migration_id    bigint NOT NULL DEFAULT 0,
        source          text NOT NULL,
        arm             text NOT NULL,
        percent         real NOT NULL DEFAULT 0,
        seen            bigint NOT NULL DEFAULT 0,
        queries         bigint NOT NULL DEFAULT 0,
        errors          bigint NOT NULL DEFAULT 0,
        dropped         bigint NOT NULL DEFAULT 0,
        cache_hits      bigint NOT NULL DEFAULT 0,
        cache_known     bigint NOT NULL DEFAULT 0,
        latency_sum_ms  double precision NOT NULL DEFAULT 0,
        search_sum_ms   double precision NOT NULL DEFAULT 0,
        embed_sum_ms    double precision NOT NULL DEFAULT 0,
        latency_hist    bigint[] NOT NULL,
        search_hist     bigint[] NOT NULL,
        embed_hist      bigint[] NOT NULL,
        PRIMARY KEY (minute, migration_id, source, arm, percent)
    )""",
    "CREATE INDEX IF NOT EXISTS query_rollup_migration ON swarm.query_rollup (migration_id, minute)",
    "COMMENT ON TABLE swarm.query_rollup IS 'swarm: searches per minute, per migration (0: none), source, arm "
    "and share; queries/errors and the latency histograms count the sampled searches, seen counts them all'",
]


def bucket_of(ms: float) -> int:
    """The histogram bucket of a latency in ms (``le`` semantics: a value on a bound belongs to that bound)."""
    return bisect.bisect_left(BOUNDS_MS, ms)


def _hist_add(col: str) -> sql.Composed:
    c = sql.Identifier(col)
    return sql.SQL(
        "{c} = ARRAY(SELECT coalesce(a, 0) + coalesce(b, 0) "
        "FROM unnest(r.{c}, EXCLUDED.{c}) WITH ORDINALITY AS u(a, b, n) ORDER BY n)"
    ).format(c=c)


def upsert_sql() -> sql.Composed:
    """Add one key's counters to its minute's row (params: the columns of :data:`KEY`, :data:`COUNTS`,
    :data:`SUMS`, :data:`HISTS` in that order)."""
    cols = [*KEY, *COUNTS, *SUMS, *HISTS]
    sets = [sql.SQL("{c} = r.{c} + EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in (*COUNTS, *SUMS)]
    sets += [_hist_add(c) for c in HISTS]
    return sql.SQL(
        "INSERT INTO swarm.query_rollup AS r ({cols}) VALUES ({vals}) ON CONFLICT ({key}) DO UPDATE SET {sets}"
    ).format(
        cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
        vals=sql.SQL(", ").join(sql.Placeholder() * len(cols)),
        key=sql.SQL(", ").join(map(sql.Identifier, KEY)),
        sets=sql.SQL(", ").join(sets),
    )


#: A flush waits at most this long for a lock or for its statements: a pooled connection is not held by a
#: blocked write (the counts go back and are written with the next flush).
WRITE_TIMEOUTS = "SELECT set_config('lock_timeout', '1s', true), set_config('statement_timeout', '5s', true)"


def write(conn: psycopg.Connection, rows: Sequence[Sequence[Any]]) -> None:
    """Upsert flushed rows (each as :func:`upsert_sql` takes its parameters) in one transaction."""
    if not rows:
        return
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(WRITE_TIMEOUTS)
        cur.executemany(upsert_sql(), rows)


async def awrite(conn: psycopg.AsyncConnection, rows: Sequence[Sequence[Any]]) -> None:
    if not rows:
        return
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute(WRITE_TIMEOUTS)
        await cur.executemany(upsert_sql(), rows)


_DELETE_ROLLUP = "DELETE FROM swarm.query_rollup WHERE minute < now() - make_interval(secs => %s)"
_OLD_LOG = "SELECT to_regclass('swarm.query_log')"
_DELETE_OLD_LOG = "DELETE FROM swarm.query_log WHERE at < now() - make_interval(secs => %s)"


def retention(conn: psycopg.Connection, days: float) -> int:
    """Delete the record older than ``days`` (the rollup, and rows of the old per-search log); returns rows
    deleted."""
    secs = float(days) * 86400.0
    n = conn.execute(_DELETE_ROLLUP, [secs]).rowcount
    if one(conn.execute(_OLD_LOG).fetchone(), _OLD_LOG)[0] is not None:
        n += conn.execute(_DELETE_OLD_LOG, [secs]).rowcount
    return int(n or 0)


async def aretention(conn: psycopg.AsyncConnection, days: float) -> int:
    """The async twin of :func:`retention` (the same statements)."""
    secs = float(days) * 86400.0
    n = (await conn.execute(_DELETE_ROLLUP, [secs])).rowcount
    if one(await (await conn.execute(_OLD_LOG)).fetchone(), _OLD_LOG)[0] is not None:
        n += (await conn.execute(_DELETE_OLD_LOG, [secs])).rowcount
    return int(n or 0)


# ------------------------------------------------------------------------------------------------------------
# Reading it back
# ------------------------------------------------------------------------------------------------------------
def quantile(hist: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram over :data:`BOUNDS_MS`, as Prometheus' histogram_quantile."""
    total = sum(hist)
    if total <= 0:
        return None
    rank = q * total
    cum = 0.0
    for i, n in enumerate(hist):
        if n and cum + n >= rank:
            if i >= len(BOUNDS_MS):
                return float(BOUNDS_MS[-1])
            lo = 0.0 if i == 0 else float(BOUNDS_MS[i - 1])
            hi = float(BOUNDS_MS[i])
            return lo + (hi - lo) * max(0.0, rank - cum) / n
        cum += n
    return float(BOUNDS_MS[-1])


def arm_stats(
    conn: psycopg.Connection,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    migration_id: int | None = None,
    sources: tuple[str, ...] | None = None,
    percent: float | None = None,
    per_arm: bool = True,
) -> dict[str, dict[str, Any]]:
    """Per arm (or over both as ``"all"`` with ``per_arm=False``) over the minutes that overlap
    [``since``, ``until``]: queries, errors, error rate, latency p50/p95/p99, search and embed p95, cache hit
    rate; with ``percent``, only searches made while the share was that (one rollout step)."""
    where: list[sql.Composable] = [sql.SQL("true")]
    params: list[Any] = []
    if since is not None:
        where.append(sql.SQL("minute >= date_trunc('minute', %s::timestamptz)"))
        params.append(since)
    if until is not None:
        where.append(sql.SQL("minute <= %s"))
        params.append(until)
    if migration_id is not None:
        where.append(sql.SQL("migration_id = %s"))
        params.append(migration_id)
    if sources:
        where.append(sql.SQL("source = ANY(%s)"))
        params.append(list(sources))
    if percent is not None:
        where.append(sql.SQL("percent = %s::real"))
        params.append(float(percent))
    q = sql.SQL("SELECT arm, {cols} FROM swarm.query_rollup WHERE {w}").format(
        cols=sql.SQL(", ").join(map(sql.Identifier, (*COUNTS, *SUMS, *HISTS))), w=sql.SQL(" AND ").join(where)
    )
    exists = one(
        conn.execute("SELECT to_regclass('swarm.query_rollup')").fetchone(), "to_regclass('swarm.query_rollup')"
    )
    if exists[0] is None:
        return {}
    acc: dict[str, dict[str, Any]] = {}
    for row in conn.execute(q, params).fetchall():
        arm = row[0] if per_arm else "all"
        a = acc.setdefault(arm, {**{c: 0 for c in (*COUNTS, *SUMS)}, **{h: [0] * NBUCKETS for h in HISTS}})
        values = dict(zip((*COUNTS, *SUMS, *HISTS), row[1:], strict=True))
        for c in (*COUNTS, *SUMS):
            a[c] += values[c]
        for h in HISTS:
            a[h] = [x + int(y) for x, y in zip(a[h], values[h], strict=True)]
    out: dict[str, dict[str, Any]] = {}
    for arm, a in acc.items():
        n, errors = int(a["queries"]), int(a["errors"])
        out[arm] = {
            "queries": n,
            "errors": errors,
            "error_rate": errors / n if n else 0.0,
            "p50_latency_ms": quantile(a["latency_hist"], 0.50),
            "p95_latency_ms": quantile(a["latency_hist"], 0.95),
            "p99_latency_ms": quantile(a["latency_hist"], 0.99),
            "p95_search_ms": quantile(a["search_hist"], 0.95),
            "p95_embed_ms": quantile(a["embed_hist"], 0.95),
            "cache_hit_rate": a["cache_hits"] / a["cache_known"] if a["cache_known"] else None,
            "seen": int(a["seen"]),
            "dropped": int(a["dropped"]),
        }
    return out
