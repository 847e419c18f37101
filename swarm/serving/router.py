"""The query router: each search goes to the legacy or the new column by the rollout share in the database.

* **Share**: ``swarm.migrations.rollout_percent`` of the newest migration of the configured table, re-read at
  most every ``share_ttl`` seconds (1 s), so ``rollout --percent`` and a rollback reach every router within a
  second. No usable migration (none, rolled back, failed, still backfilling) means 0%.
* **Sticky**: a caller key goes to the new column when its bucket (the first 8 bytes of SHA-256 of the key,
  mapped to [0, 100)) is below the share. The hash is the same in every process and on every machine, and a
  caller on the new column stays there as the share grows. A query without a caller key gets a random one.
* **Kill switch**: ``USE_NOMIC_EMBEDDINGS=false`` (``rollout.use_new = false``) sends every query to legacy,
  whatever the share.
* **Records**: each query's arm, latency (embedding and search), cache hit and error go to
  ``swarm.query_log``; the rollout gates and the alert rules are computed from it. A query that fails on the
  new column is answered from legacy (and recorded as an error of the new arm).
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from swarm import migration as mig
from swarm.core.errors import SwarmError, UsageError
from swarm.core.log import get_logger
from swarm.quality import Hit
from swarm.store.db import Database
from swarm.store.search import AnnSettings, run_search
from swarm.store.sql import Target

if TYPE_CHECKING:
    import numpy as np

    from swarm.core.config import Config

log = get_logger()

ARMS = ("legacy", "new")
#: Phases after which the new column is complete and may serve queries.
SERVABLE_PHASES = ("validate", "rollout", "done", "decommissioned")

QUERY_LOG_DDL = [
    "CREATE SCHEMA IF NOT EXISTS swarm",
    """CREATE TABLE IF NOT EXISTS swarm.query_log (
        id            bigserial PRIMARY KEY,
        migration_id  bigint,
        at            timestamptz NOT NULL DEFAULT clock_timestamp(),
        source        text NOT NULL,
        caller        text,
        arm           text NOT NULL,
        k             int NOT NULL,
        ok            boolean NOT NULL,
        error         text,
        embed_ms      real NOT NULL DEFAULT 0,
        search_ms     real NOT NULL DEFAULT 0,
        latency_ms    real NOT NULL DEFAULT 0,
        cache_hit     boolean
    )""",
    "CREATE INDEX IF NOT EXISTS query_log_at ON swarm.query_log (at)",
    "CREATE INDEX IF NOT EXISTS query_log_migration ON swarm.query_log (migration_id, at)",
]


def ensure_schema(conn: psycopg.Connection) -> None:
    """Create ``swarm.query_log`` if it is missing (idempotent; serialized by an advisory lock)."""
    if conn.execute("SELECT to_regclass('swarm.query_log')").fetchone()[0] is not None:
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('swarm.query_log'))")
        for stmt in QUERY_LOG_DDL:
            conn.execute(stmt)


def bucket(caller: str) -> float:
    """The caller's stable position in [0, 100): the same in every process, Python version and machine."""
    h = int.from_bytes(hashlib.sha256(caller.encode("utf-8")).digest()[:8], "big")
    return h / 2**64 * 100.0


def choose_arm(caller: str, percent: float, use_new: bool = True) -> str:
    """``"new"`` when the flag allows it and the caller's bucket is below the share, else ``"legacy"``."""
    return "new" if use_new and percent > 0 and bucket(caller) < percent else "legacy"


@dataclass(frozen=True)
class Share:
    """What the database says about routing right now."""

    migration: mig.Migration | None
    percent: float
    use_new: bool

    @property
    def migration_id(self) -> int | None:
        return self.migration.id if self.migration else None

    @property
    def decommissioned(self) -> bool:
        return self.migration is not None and self.migration.phase == "decommissioned"


@dataclass
class SearchResult:
    """One routed search: the arm that answered, the ids and distances, what it cost."""

    query: str
    arm: str
    ids: list[str]
    distances: list[float]
    embed_ms: float
    search_ms: float
    caller: str | None
    migration_id: int | None
    percent: float
    fallback: bool = False
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def latency_ms(self) -> float:
        return self.embed_ms + self.search_ms

    def as_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "arm": self.arm,
            "results": [{"id": i, "distance": round(d, 6)} for i, d in zip(self.ids, self.distances, strict=True)],
            "latency_ms": round(self.latency_ms, 3),
            "embed_ms": round(self.embed_ms, 3),
            "search_ms": round(self.search_ms, 3),
            "caller": self.caller,
            "migration": self.migration_id,
            "percent": self.percent,
            "fallback": self.fallback,
            "errors": self.errors,
        }


class _Arm:
    """One side of the router: an embedder (loaded on first use) and the column it searches."""

    def __init__(self, name: str, loader: Any, embedder: Any = None) -> None:
        self.name = name
        self._loader = loader
        self._embedder = embedder
        self._lock = threading.Lock()

    @property
    def embedder(self) -> Any:
        with self._lock:
            if self._embedder is None:
                self._embedder = self._loader()
            return self._embedder

    def embed(self, text: str) -> tuple[np.ndarray, bool]:
        e = self.embedder
        with self._lock:  # exact cache-hit accounting; llama.cpp runs one batch at a time anyway
            before = getattr(getattr(e, "stats", None), "cache_hits", 0)
            vec = e.embed([text], query=True)[0]
            after = getattr(getattr(e, "stats", None), "cache_hits", 0)
        return vec, after > before


class Router:
    """Routes searches between the legacy and the new column; safe to share between threads.

    ``legacy_embedder``/``new_embedder`` may be passed in (the validator shares its own); otherwise they are
    loaded from the config on first use. ``record=False`` measures without writing ``swarm.query_log``.
    """

    def __init__(
        self,
        cfg: Config,
        dsn: str,
        *,
        legacy_embedder: Any = None,
        new_embedder: Any = None,
        source: str = "search",
        record: bool = True,
        share_ttl: float = 1.0,
    ) -> None:
        self.cfg = cfg
        self.dsn = dsn
        self.source = source
        self.record = record
        self.share_ttl = share_ttl
        self._local = threading.local()
        self._dbs: list[Database] = []
        self._dbs_lock = threading.Lock()
        self._share: Share | None = None
        self._share_at = 0.0
        self._share_lock = threading.Lock()
        self._legacy_col: tuple[str, int] | None = None
        self.arms = {
            "legacy": _Arm("legacy", self._load_legacy, legacy_embedder),
            "new": _Arm("new", self._load_new, new_embedder),
        }
        self.db.run(ensure_schema, what="query_log_schema")

    # -- plumbing ------------------------------------------------------------------------------------------
    @property
    def db(self) -> Database:
        """This thread's connection (psycopg connections serialize their callers; a server has many)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = Database(self.dsn, application_name=f"swarm:router:{self.source}", max_attempts=3)
            self._local.db = db
            with self._dbs_lock:
                self._dbs.append(db)
        return db

    def close(self) -> None:
        with self._dbs_lock:
            for db in self._dbs:
                db.close()
            self._dbs.clear()

    def _load_legacy(self) -> Any:
        from model.factory import embedder_for

        return embedder_for(self.cfg, "legacy")

    def _load_new(self) -> Any:
        from model.factory import embedder_for

        return embedder_for(self.cfg, "new")

    # -- the share -----------------------------------------------------------------------------------------
    def share(self, *, refresh: bool = False) -> Share:
        """The routing state, from the database at most ``share_ttl`` seconds old."""
        with self._share_lock:
            now = time.monotonic()
            if refresh or self._share is None or now - self._share_at > self.share_ttl:
                m = self.db.run(lambda c: mig.latest(c, self.cfg, rehearse=False), what="share")
                percent = 0.0
                if m is not None and m.state in ("validating", "completed") and m.phase in SERVABLE_PHASES:
                    percent = float(m.rollout_percent)
                self._share = Share(m, percent, self.cfg.rollout.use_new)
                self._share_at = now
            return self._share

    def _legacy_column(self, target: Target) -> tuple[str, int]:
        if self._legacy_col is None:
            info = self.db.run(lambda c: mig.inspect_table(c, self.cfg), what="inspect")
            if info.legacy_dim is None or info.legacy_type not in ("vector", "halfvec"):
                raise SwarmError(f"{target.table}.{target.legacy_column} is {info.legacy_type}, not a vector column")
            self._legacy_col = (info.legacy_type, info.legacy_dim)
        return self._legacy_col

    def _target(self, share: Share) -> Target:
        if share.migration is not None:
            return share.migration.target
        from swarm.migration import target_for

        return target_for(self.cfg, "bigint")

    # -- searching -----------------------------------------------------------------------------------------
    def run_arm(
        self, arm: str, text: str, k: int, *, share: Share | None = None, require_new: bool = False
    ) -> tuple[Hit, list[float], bool]:
        """Embed ``text`` with ``arm``'s model and search its column; errors go in the Hit, not raised.

        Returns (hit, distances, cache_hit). ``require_new`` restricts both arms to rows with a new vector.
        """
        share = share or self.share()
        target = self._target(share)
        hit = Hit()
        cache_hit = False
        try:
            if arm == "new":
                m = share.migration
                if m is None:
                    raise SwarmError(f"no migration of {self.cfg.database.table}: there is no new column to search")
                column, ctype, dim = target.new_column, m.column_type, m.dimension
            else:
                column = target.legacy_column
                ctype, dim = self._legacy_column(target)
            t0 = time.perf_counter()
            vec, cache_hit = self.arms[arm].embed(text)
            t1 = time.perf_counter()
            rerank = mig.search_rerank(share.migration, k) if arm == "new" and share.migration else None
            q = target.search(column, ctype, dim, require=target.new_column if require_new else None, rerank=rerank)
            # The swarm's ANN settings go with the index it built; the legacy column keeps the application's.
            ann = AnnSettings.of(self.cfg, rerank=rerank) if arm == "new" else None
            rows = self.db.run(lambda c: run_search(c, q, vec, k, ann), what=f"search_{arm}")
            t2 = time.perf_counter()
            hit.ids = [r[0] for r in rows]
            hit.embed_ms, hit.search_ms = (t1 - t0) * 1000, (t2 - t1) * 1000
            return hit, [float(r[1]) for r in rows], cache_hit
        except (psycopg.Error, SwarmError, ValueError) as e:
            hit.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500]
            return hit, [], cache_hit

    def search(self, query: str, k: int | None = None, caller: str | None = None) -> SearchResult:
        """Answer one search from the arm the share picks for ``caller``; record it in ``swarm.query_log``."""
        if not isinstance(query, str) or not query.strip():
            raise UsageError("the query is empty; pass some text to search for")
        k = int(k or self.cfg.validation.k)
        if not 1 <= k <= 1000:
            raise UsageError(f"k = {k}: must be between 1 and 1000")
        share = self.share()
        key = caller if caller else f"anon:{uuid.uuid4().hex}"
        if share.decommissioned:
            arm = "new"  # the legacy column is gone
        else:
            arm = choose_arm(key, share.percent, share.use_new)
        hit, dist, cache_hit = self.run_arm(arm, query, k, share=share)
        self._record(share, caller, arm, k, hit, cache_hit)
        result = SearchResult(
            query, arm, hit.ids, dist, hit.embed_ms, hit.search_ms, caller, share.migration_id, share.percent
        )
        if hit.error is None:
            return result
        result.errors[arm] = hit.error
        if arm == "new":
            # Serve the caller from legacy; the new arm's error stays on record for the gates and alerts.
            log.warning("router.new_failed", error=hit.error, caller=caller)
            hit2, dist2, cache2 = self.run_arm("legacy", query, k, share=share)
            self._record(share, caller, "legacy", k, hit2, cache2)
            if hit2.error is None:
                result.arm, result.ids, result.distances, result.fallback = "legacy", hit2.ids, dist2, True
                result.embed_ms += hit2.embed_ms
                result.search_ms += hit2.search_ms
                return result
            result.errors["legacy"] = hit2.error
        raise SwarmError(f"search failed: {'; '.join(f'{a}: {e}' for a, e in result.errors.items())}")

    def _record(self, share: Share, caller: str | None, arm: str, k: int, hit: Hit, cache_hit: bool) -> None:
        if not self.record:
            return
        try:
            self.db.run(
                lambda c: c.execute(
                    "INSERT INTO swarm.query_log (migration_id, source, caller, arm, k, ok, error, embed_ms, "
                    "search_ms, latency_ms, cache_hit) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [
                        share.migration_id,
                        self.source,
                        caller,
                        arm,
                        k,
                        hit.error is None,
                        hit.error,
                        hit.embed_ms,
                        hit.search_ms,
                        hit.latency_ms,
                        cache_hit,
                    ],
                ),
                what="query_log",
            )
        except (psycopg.Error, SwarmError) as e:  # a lost record must not fail the user's search
            log.warning("router.record_failed", error=type(e).__name__)


# ------------------------------------------------------------------------------------------------------------
# Reading the record
# ------------------------------------------------------------------------------------------------------------
def arm_stats(
    conn: psycopg.Connection,
    *,
    since: Any = None,
    until: Any = None,
    migration_id: int | None = None,
    sources: tuple[str, ...] | None = None,
    callers_like: str | None = None,
    per_arm: bool = True,
) -> dict[str, dict[str, Any]]:
    """Per arm (or, with ``per_arm=False``, over both as ``"all"``) over a time range of ``swarm.query_log``:
    queries, errors, error rate, latency p50/p95/p99, search p95, cache hit rate. ``since``/``until`` are
    timestamps (``datetime``)."""
    where = [sql.SQL("true")]
    params: list[Any] = []
    if since is not None:
        where.append(sql.SQL("at >= %s"))
        params.append(since)
    if until is not None:
        where.append(sql.SQL("at <= %s"))
        params.append(until)
    if migration_id is not None:
        where.append(sql.SQL("migration_id = %s"))
        params.append(migration_id)
    if sources:
        where.append(sql.SQL("source = ANY(%s)"))
        params.append(list(sources))
    if callers_like:
        where.append(sql.SQL("caller LIKE %s"))
        params.append(callers_like)
    q = sql.SQL(
        "SELECT {arm}, count(*), count(*) FILTER (WHERE NOT ok), "
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) FILTER (WHERE ok), "
        "percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) FILTER (WHERE ok), "
        "percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) FILTER (WHERE ok), "
        "percentile_cont(0.95) WITHIN GROUP (ORDER BY search_ms) FILTER (WHERE ok), "
        "percentile_cont(0.95) WITHIN GROUP (ORDER BY embed_ms) FILTER (WHERE ok), "
        "avg(CASE WHEN cache_hit THEN 1.0 ELSE 0.0 END) FILTER (WHERE cache_hit IS NOT NULL) "
        "FROM swarm.query_log WHERE {w} GROUP BY 1"
    ).format(arm=sql.SQL("arm" if per_arm else "'all'::text"), w=sql.SQL(" AND ").join(where))
    out: dict[str, dict[str, Any]] = {}
    for arm, n, errors, p50, p95, p99, s95, e95, hit in conn.execute(q, params).fetchall():
        out[arm] = {
            "queries": int(n),
            "errors": int(errors),
            "error_rate": errors / n if n else 0.0,
            "p50_latency_ms": p50,
            "p95_latency_ms": p95,
            "p99_latency_ms": p99,
            "p95_search_ms": s95,
            "p95_embed_ms": e95,
            "cache_hit_rate": float(hit) if hit is not None else None,
        }
    return out
