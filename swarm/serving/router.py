"""The query router: each search goes to the legacy or the new column by the rollout share in the database.

This is the application's API (``swarm.Router``, ``swarm.AsyncRouter``; README, "Integrating your
application"):

* ``Router.from_config(path_or_cfg)``: a config file, a :class:`~swarm.core.config.Config` or a dict of its
  sections (``{"database": {"dsn": ..., "table": "documents"}}``: no TOML needed). Models load on first use,
  per arm actually used: an application that only asks :meth:`Router.arm` loads none.
* ``search(query, k, caller, where={column: value}, columns=[...])``: ids, distances and the row columns named,
  filters by equality (``None``: IS NULL, a list: any of), column names checked against the table.
* ``arm(caller)``: where that caller's search goes (arm, column, type, dimension), for applications that embed
  and query themselves; in SQL the same answer is ``SELECT * FROM swarm.arm('documents', 'user-42')``
  (:mod:`swarm.store.routing`).

How it routes:

* **Share**: :sql:`swarm.share(table)` (one implementation, also behind ``swarm.arm``): the newest
  non-rehearsal migration of the table; its ``rollout_percent`` once its new column may serve, else 0. Re-read
  at most every ``serving.share_ttl_s`` seconds (1 s), so ``rollout --percent`` and a rollback reach every
  router within a second.
* **Sticky**: a caller key goes to the new column when its bucket (:func:`bucket`: the first 8 bytes of SHA-256
  of the key, in [0, 10000)) is below ``round(percent * 100)``. The same in every process, on every machine and
  in SQL; a caller on the new column stays there as the share grows. A query without a caller gets a random key.
* **Kill switch**: ``USE_NOMIC_EMBEDDINGS=false`` (``rollout.use_new = false``) in this process, or
  ``swarm.settings.use_new_embeddings = false`` in the database (``rollout --use-new false``), sends every query
  to legacy, whatever the share (until the legacy column is decommissioned).
* **Connections**: a bounded pool (:class:`swarm.store.pool.Pool`, ``serving.pool_size``) shared by every
  thread; when no connection comes free within ``serving.pool_timeout_s`` the search raises
  :class:`~swarm.core.errors.Overloaded` (``swarm serve``: 503) and nothing more is opened. The embedding is
  computed before a connection is taken.
* **Records**: each search is counted in memory and flushed about once a second to ``swarm.query_rollup``
  (:mod:`swarm.serving.recorder`), never a write per search; the rollout gates and the alert rules read it. A
  query that fails on the new column is answered from legacy (and recorded as an error of the new arm).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from swarm import migration as mig
from swarm.core.errors import DatabaseUnavailable, Overloaded, SwarmError, UsageError
from swarm.core.log import get_logger
from swarm.quality import Hit
from swarm.serving.recorder import Flusher, Recorder
from swarm.store import querylog, routing
from swarm.store.db import ServerInfo
from swarm.store.querylog import arm_stats
from swarm.store.search import (
    ITERATIVE_SCAN,
    AnnSettings,
    SearchQuery,
    arun_query,
    build_search,
    pgvector_version,
    run_query,
    table_columns,
)
from swarm.store.sql import Target, regclass_text, split_table

if TYPE_CHECKING:
    import numpy as np

    from swarm.core.config import Config
    from swarm.store.pool import AsyncPool, Pool

log = get_logger()

ARMS = ("legacy", "new")
#: Phases after which the new column is complete and may serve queries (also in swarm.share).
SERVABLE_PHASES = routing.SERVABLE_PHASES
#: A caller's bucket is in [0, BUCKETS): hundredths of a percent of the share.
BUCKETS = 10_000
MAX_K = 1000
_VECTOR = re.compile(r"^(vector|halfvec)\((\d+)\)$")
#: Errors of one arm: the search goes on with the other arm (shed and unreachable are not the arm's fault).
_ARM_ERRORS = (psycopg.Error, SwarmError, ValueError)
_NOT_THE_ARM = (Overloaded, DatabaseUnavailable, UsageError)

__all__ = ["ARMS", "Arm", "AsyncRouter", "Router", "Row", "SearchResult", "Share", "arm_stats", "bucket"]


def bucket(caller: str) -> int:
    """The caller's stable bucket in [0, 10000): ``floor(h * 10000 / 2**64)`` of ``h``, the first 8 bytes of
    SHA-256 of the key's UTF-8 bytes (big-endian). Exact integers, so :sql:`swarm.bucket` agrees on every key."""
    h = int.from_bytes(hashlib.sha256(caller.encode("utf-8")).digest()[:8], "big")
    return (h * BUCKETS) >> 64


def threshold(percent: float) -> int:
    """The share in buckets: a caller whose bucket is below it goes to the new column (as :sql:`swarm.share`)."""
    return round(float(percent) * 100)


def choose_arm(caller: str, percent: float, use_new: bool = True) -> str:
    """``"new"`` when the flag allows it and the caller's bucket is below the share, else ``"legacy"``."""
    return "new" if use_new and bucket(caller) < threshold(percent) else "legacy"


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

    @property
    def threshold(self) -> int:
        return threshold(self.percent)

    def arm_for(self, caller: str) -> str:
        if self.decommissioned:
            return "new"  # the legacy column is gone
        return "new" if self.migration is not None and self.use_new and bucket(caller) < self.threshold else "legacy"


@dataclass(frozen=True)
class Arm:
    """Where one caller's search goes (:meth:`Router.arm`): embed the query with ``model`` and search
    ``ORDER BY column <=> $1::<column_type>`` of ``table``."""

    arm: str
    table: str
    column: str
    column_type: str
    dimension: int
    model: str
    migration_id: int | None
    percent: float

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class Row:
    """One search result: the key (as text), the cosine distance and the columns asked for."""

    id: str
    distance: float
    columns: dict[str, Any] = field(default_factory=dict)


@dataclass
class SearchResult:
    """One routed search: the arm that answered, the rows, what it cost."""

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
    rows: list[Row] = field(default_factory=list)
    exact: bool = False  # a filtered ANN scan found fewer than k rows; answered by exact search

    @property
    def latency_ms(self) -> float:
        return self.embed_ms + self.search_ms

    def as_dict(self) -> dict[str, Any]:
        results = []
        for r in self.rows:
            item: dict[str, Any] = {"id": r.id, "distance": round(r.distance, 6)}
            if r.columns:
                item["columns"] = r.columns
            results.append(item)
        return {
            "query": self.query,
            "arm": self.arm,
            "results": results,
            "latency_ms": round(self.latency_ms, 3),
            "embed_ms": round(self.embed_ms, 3),
            "search_ms": round(self.search_ms, 3),
            "caller": self.caller,
            "migration": self.migration_id,
            "percent": self.percent,
            "fallback": self.fallback,
            "exact": self.exact,
            "errors": self.errors,
        }


@dataclass
class _Attempt:
    hit: Hit
    rows: list[Row]
    cache_hit: bool = False
    exact: bool = False


class _Arm:
    """One side of the router: an embedder (loaded on first use) and the column it searches."""

    def __init__(self, name: str, loader: Any, embedder: Any = None) -> None:
        self.name = name
        self._loader = loader
        self._embedder = embedder
        self._owned = embedder is None  # loaded here, closed here; a shared embedder stays its owner's
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._embedder is not None

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

    def close(self) -> None:
        with self._lock:
            e, self._embedder = self._embedder, (None if self._owned else self._embedder)
        if e is not None and self._owned and hasattr(e, "close"):
            e.close()


def load(config: Config | str | os.PathLike[str] | Mapping[str, Any] | None) -> Config:
    """A config from a Config, a TOML path, or a dict of sections (defaults for the rest, no file read)."""
    from swarm.core.config import Config, load_config

    if isinstance(config, Config):
        return config
    if config is None:
        return load_config(None)
    if isinstance(config, (str, os.PathLike)):
        return load_config(Path(config))
    if isinstance(config, Mapping):
        return load_config(None, default_file=False, **{k: dict(v) for k, v in config.items()})
    raise UsageError(f"config = {type(config).__name__}: pass a path, a Config or a dict of sections")


def _check_where(where: Any) -> dict[str, Any]:
    if where is None:
        return {}
    if not isinstance(where, Mapping):
        raise UsageError(f"where = {where!r}: must be a mapping of column names to values")
    scalar = (str, int, float, bool, type(None))
    out: dict[str, Any] = {}
    for name, value in where.items():
        if not isinstance(name, str):
            raise UsageError(f"where: column name {name!r} must be a string")
        if isinstance(value, (list, tuple)):
            if not value or not all(isinstance(v, scalar) and v is not None for v in value):
                raise UsageError(f"where.{name} = {value!r}: a list must hold strings, numbers or booleans")
        elif not isinstance(value, scalar):
            raise UsageError(f"where.{name} = {value!r}: must be a string, number, boolean, null or a list of those")
        out[name] = value
    return out


class _RouterBase:
    """Everything of a router but its I/O: config, arms, the choice of arm, the search plan, the record."""

    def __init__(
        self,
        cfg: Config,
        dsn: str,
        *,
        legacy_embedder: Any = None,
        new_embedder: Any = None,
        source: str = "search",
        record: bool = True,
        share_ttl: float | None = None,
    ) -> None:
        self.cfg = cfg
        self.dsn = dsn
        self.source = source
        self.record = record
        self.share_ttl = cfg.serving.share_ttl_s if share_ttl is None else share_ttl
        self.recorder = Recorder(source, sample=cfg.rollout.record_sample)
        self._share: Share | None = None
        self._share_at = 0.0
        self._types: dict[str, str] | None = None
        self._types_key: Any = None
        self._server: ServerInfo | None = None
        schema, table = split_table(cfg.database.table)
        self._regclass = regclass_text(schema, table)
        self.arms = {
            "legacy": _Arm("legacy", self._load_legacy, legacy_embedder),
            "new": _Arm("new", self._load_new, new_embedder),
        }

    @property
    def application_name(self) -> str:
        return f"swarm:{self.source}"

    def _load_legacy(self) -> Any:
        from model.factory import embedder_for

        return embedder_for(self.cfg, "legacy")

    def _load_new(self) -> Any:
        from model.factory import embedder_for

        return embedder_for(self.cfg, "new")

    # -- the share -----------------------------------------------------------------------------------------
    def _share_fresh(self) -> bool:
        return self._share is not None and time.monotonic() - self._share_at <= self.share_ttl

    def _read_share(self, conn: psycopg.Connection) -> Share:
        row = routing.read_share(conn, self._regclass)
        m = mig.load(conn, row["migration_id"]) if row else None
        use_new = self.cfg.rollout.use_new and (row["use_new"] if row else routing.use_new(conn))
        return Share(m, float(row["percent"]) if row else 0.0, bool(use_new))

    def _set_share(self, share: Share) -> Share:
        self._share, self._share_at = share, time.monotonic()
        key = (share.migration_id, share.migration.phase if share.migration else None, self._target(share))
        if key != self._types_key:
            self._types, self._types_key = None, key  # columns renamed, dropped or added: read them again
        return share

    def _target(self, share: Share) -> Target:
        if share.migration is not None:
            return share.migration.target
        from swarm.migration import target_for

        return target_for(self.cfg, "bigint")

    # -- requests ------------------------------------------------------------------------------------------
    def _request(self, query: Any, k: Any, where: Any, columns: Any) -> tuple[int, dict[str, Any], tuple[str, ...]]:
        if not isinstance(query, str) or not query.strip():
            raise UsageError("the query is empty; pass some text to search for")
        if k is None:
            k = self.cfg.validation.k
        if not isinstance(k, int) or isinstance(k, bool):
            raise UsageError(f"k = {k!r}: must be an integer")
        if not 1 <= k <= MAX_K:
            raise UsageError(f"k = {k}: must be between 1 and {MAX_K}")
        if (
            isinstance(columns, str)
            or not isinstance(columns, Sequence)
            or not all(isinstance(c, str) for c in columns)
        ):
            raise UsageError(f"columns = {columns!r}: must be a list of column names")
        return k, _check_where(where), tuple(dict.fromkeys(columns))

    def _check_columns(self, types: dict[str, str], where: dict[str, Any], columns: tuple[str, ...]) -> None:
        unknown = [c for c in (*where, *columns) if c not in types]
        if unknown:
            raise UsageError(
                f"no column {unknown[0]!r} in {self.cfg.database.table}; columns: {', '.join(sorted(types))}"
            )

    def _column(self, arm: str, share: Share, types: dict[str, str]) -> tuple[str, str, int]:
        target = self._target(share)
        if arm == "new":
            m = share.migration
            if m is None:
                raise SwarmError(f"no migration of {self.cfg.database.table}: there is no new column to search")
            return target.new_column, m.column_type, m.dimension
        found = _VECTOR.match(types.get(target.legacy_column, ""))
        if found is None:
            what = types.get(target.legacy_column, "not there")
            raise SwarmError(f"{target.table}.{target.legacy_column} is {what}, not a vector column")
        return target.legacy_column, found.group(1), int(found.group(2))

    def _plan(
        self,
        arm: str,
        share: Share,
        k: int,
        where: dict[str, Any],
        columns: tuple[str, ...],
        types: dict[str, str],
        require_new: bool,
    ) -> tuple[SearchQuery, AnnSettings | None, bool]:
        column, ctype, dim = self._column(arm, share, types)
        target = self._target(share)
        rerank = mig.search_rerank(share.migration, k) if arm == "new" and share.migration else None
        q = build_search(
            target,
            column,
            ctype,
            dim,
            where=where,
            columns=columns,
            types=types,
            require=target.new_column if require_new else None,
            rerank=rerank,
        )
        # The swarm's ANN settings go with the index it built; the legacy column keeps the application's.
        ann = AnnSettings.of(self.cfg, rerank=rerank) if arm == "new" else None
        iterative = q.filtered and self._server is not None and self._server.pgvector_tuple >= ITERATIVE_SCAN
        return q, ann, iterative

    def _arm_of(self, share: Share, caller: str | None) -> str:
        return share.arm_for(caller if caller else f"anon:{uuid.uuid4().hex}")

    def _describe(self, share: Share, arm: str, types: dict[str, str]) -> Arm:
        column, ctype, dim = self._column(arm, share, types)
        model = share.migration.model_id if arm == "new" and share.migration else self.cfg.legacy.model
        return Arm(arm, self._target(share).table, column, ctype, dim, model, share.migration_id, share.percent)

    @staticmethod
    def _rows(raw: list[tuple[Any, ...]], columns: tuple[str, ...]) -> list[Row]:
        return [Row(r[0], float(r[1]), dict(zip(columns, r[2:], strict=True))) for r in raw]

    @staticmethod
    def _error(e: BaseException) -> str:
        text = str(e).strip()
        return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:500]

    def _record(self, share: Share, arm: str, a: _Attempt) -> None:
        if not self.record:
            return
        self.recorder.record(
            migration_id=share.migration_id,
            arm=arm,
            percent=share.percent,
            ok=a.hit.error is None,
            embed_ms=a.hit.embed_ms,
            search_ms=a.hit.search_ms,
            cache_hit=a.cache_hit,
        )
        if a.exact:
            self.recorder.live.count("exact_fallbacks")

    def _result(self, query: str, caller: str | None, share: Share, arm: str, a: _Attempt) -> SearchResult:
        return SearchResult(
            query,
            arm,
            [r.id for r in a.rows],
            [r.distance for r in a.rows],
            a.hit.embed_ms,
            a.hit.search_ms,
            caller,
            share.migration_id,
            share.percent,
            rows=a.rows,
            exact=a.exact,
        )

    def _merge_fallback(self, result: SearchResult, b: _Attempt) -> SearchResult:
        result.arm, result.fallback = "legacy", True
        result.rows, result.ids, result.distances = b.rows, [r.id for r in b.rows], [r.distance for r in b.rows]
        result.embed_ms += b.hit.embed_ms
        result.search_ms += b.hit.search_ms
        result.exact = b.exact
        self.recorder.live.count("fallbacks")
        return result

    def _failed(self, result: SearchResult) -> SwarmError:
        return SwarmError(f"search failed: {'; '.join(f'{a}: {e}' for a, e in result.errors.items())}")


class Router(_RouterBase):
    """Routes searches between the legacy and the new column; safe to share between threads.

    ``legacy_embedder``/``new_embedder`` may be passed in (the validator shares its own); otherwise they are
    loaded from the config on first use, per arm. ``record=False`` measures without recording. ``pool`` shares
    another router's pool (otherwise one of ``serving.pool_size`` connections is made).
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
        share_ttl: float | None = None,
    ) -> None:
        from swarm.store.pool import Pool
        from swarm.store.schema import ensure_serving

        super().__init__(
            cfg,
            dsn,
            legacy_embedder=legacy_embedder,
            new_embedder=new_embedder,
            source=source,
            record=record,
            share_ttl=share_ttl,
        )
        sv = cfg.serving
        self.pool: Pool = Pool(
            dsn, application_name=self.application_name, min_size=sv.pool_min, max_size=sv.pool_size,
            timeout=sv.pool_timeout_s,
        )  # fmt: skip
        self._share_lock = threading.Lock()
        self._types_lock = threading.Lock()
        try:
            self.pool.run(ensure_serving, what="serving_schema")
        except BaseException:
            self.pool.close()
            raise
        self.flusher: Flusher | None = None
        if record:
            self.flusher = Flusher(self.recorder, self.pool, retention_days=cfg.rollout.query_log_days)
            self.flusher.start()

    @classmethod
    def from_config(
        cls,
        config: Config | str | os.PathLike[str] | Mapping[str, Any] | None = None,
        *,
        dsn: str | None = None,
        source: str = "app",
        **kwargs: Any,
    ) -> Router:
        """A router for an application: ``config`` is a TOML path, a Config or a dict of sections (at least
        ``{"database": {"dsn": ..., "table": ...}}``); ``dsn`` overrides the config's."""
        from swarm.store.embedded import resolve_dsn

        cfg = load(config)
        return cls(cfg, dsn or resolve_dsn(cfg), source=source, **kwargs)

    def __enter__(self) -> Router:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def flush(self) -> int:
        """Write the searches counted so far to ``swarm.query_rollup`` now (the gates read it right after)."""
        return self.flusher.flush() if self.flusher is not None else 0

    def close(self) -> None:
        """Flush the record, close the pool and the models this router loaded."""
        if self.flusher is not None:
            self.flusher.stop(flush=True)
            self.flusher = None
        self.pool.close()
        for a in self.arms.values():
            a.close()

    # -- the share -----------------------------------------------------------------------------------------
    def share(self, *, refresh: bool = False) -> Share:
        """The routing state, from the database at most ``share_ttl`` seconds old. While one thread re-reads
        it, the others go on with the previous one rather than wait."""
        if not refresh and self._share_fresh():
            return self._share  # type: ignore[return-value]
        if not self._share_lock.acquire(blocking=refresh or self._share is None):
            return self._share  # type: ignore[return-value]
        try:
            if refresh or not self._share_fresh():
                self._set_share(self.pool.run(self._read_share, what="share"))
            return self._share  # type: ignore[return-value]
        finally:
            self._share_lock.release()

    def _columns(self) -> dict[str, str]:
        types = self._types
        if types is None:
            with self._types_lock:
                if self._types is None:

                    def read(c: psycopg.Connection) -> dict[str, str]:
                        if self._server is None:
                            self._server = ServerInfo(c.info.server_version, pgvector_version(c))
                        return table_columns(c, self._regclass)

                    self._types = self.pool.run(read, what="columns")
                    if not self._types:
                        raise SwarmError(f"table {self.cfg.database.table} does not exist (database.table)")
                types = self._types
        return types

    def arm(self, caller: str | None) -> Arm:
        """Where ``caller``'s search goes, for an application that embeds and queries itself (no model loaded)."""
        share = self.share()
        return self._describe(share, self._arm_of(share, caller), self._columns())

    # -- searching -----------------------------------------------------------------------------------------
    def _attempt(
        self,
        arm: str,
        text: str,
        k: int,
        share: Share,
        where: dict[str, Any],
        columns: tuple[str, ...],
        require_new: bool = False,
    ) -> _Attempt:
        a = _Attempt(Hit(), [])
        try:
            types = self._columns()
            q, ann, iterative = self._plan(arm, share, k, where, columns, types, require_new)
            t0 = time.perf_counter()
            vec, a.cache_hit = self.arms[arm].embed(text)
            t1 = time.perf_counter()
            raw, a.exact = self.pool.run(lambda c: run_query(c, q, vec, k, ann, iterative=iterative), what=arm)
            t2 = time.perf_counter()
            a.rows = self._rows(raw, columns)
            a.hit.ids = [r.id for r in a.rows]
            a.hit.embed_ms, a.hit.search_ms = (t1 - t0) * 1000, (t2 - t1) * 1000
        except _NOT_THE_ARM:
            raise
        except _ARM_ERRORS as e:
            if isinstance(e, psycopg.errors.UndefinedColumn):
                self._types = None  # the table changed under us; read it again next time
            a.hit.error = self._error(e)
        return a

    def run_arm(
        self, arm: str, text: str, k: int, *, share: Share | None = None, require_new: bool = False
    ) -> tuple[Hit, list[float], bool]:
        """Embed ``text`` with ``arm``'s model and search its column, unrecorded; errors go in the Hit, not
        raised. Returns (hit, distances, cache_hit). ``require_new`` restricts both arms to rows with a new
        vector (validation during the backfill)."""
        a = self._attempt(arm, text, k, share or self.share(), {}, (), require_new)
        return a.hit, [r.distance for r in a.rows], a.cache_hit

    def search(
        self,
        query: str,
        k: int | None = None,
        caller: str | None = None,
        *,
        where: Mapping[str, Any] | None = None,
        columns: Sequence[str] = (),
    ) -> SearchResult:
        """Answer one search from the arm the share picks for ``caller``.

        ``where`` filters by equality on columns of the table; ``columns`` are returned with each row
        (``result.rows[i].columns``). Raises :class:`UsageError` for a bad request, :class:`Overloaded` when no
        connection came free in time, :class:`SwarmError` when both arms failed.
        """
        k, flt, cols = self._request(query, k, where, columns)
        try:
            if flt or cols:
                self._check_columns(self._columns(), flt, cols)
            share = self.share()
            arm = self._arm_of(share, caller)
            a = self._attempt(arm, query, k, share, flt, cols)
        except Overloaded:
            self.recorder.live.count("shed")
            raise
        self._record(share, arm, a)
        result = self._result(query, caller, share, arm, a)
        if a.hit.error is None:
            return result
        result.errors[arm] = a.hit.error
        if arm == "new" and not share.decommissioned:
            # Serve the caller from legacy; the new arm's error stays on record for the gates and alerts.
            log.warning("router.new_failed", error=a.hit.error, caller=caller)
            try:
                b = self._attempt("legacy", query, k, share, flt, cols)
            except Overloaded:
                self.recorder.live.count("shed")
                raise
            self._record(share, "legacy", b)
            if b.hit.error is None:
                return self._merge_fallback(result, b)
            result.errors["legacy"] = b.hit.error
        raise self._failed(result)


class AsyncRouter(_RouterBase):
    """The async twin of :class:`Router` (``psycopg_pool.AsyncConnectionPool``; embeddings computed in a worker
    thread). Open it in the running loop: ``async with AsyncRouter.from_config(...) as router:``."""

    def __init__(
        self,
        cfg: Config,
        dsn: str,
        *,
        legacy_embedder: Any = None,
        new_embedder: Any = None,
        source: str = "app",
        record: bool = True,
        share_ttl: float | None = None,
    ) -> None:
        from swarm.store.pool import AsyncPool

        super().__init__(
            cfg,
            dsn,
            legacy_embedder=legacy_embedder,
            new_embedder=new_embedder,
            source=source,
            record=record,
            share_ttl=share_ttl,
        )
        sv = cfg.serving
        self.pool: AsyncPool = AsyncPool(
            dsn, application_name=self.application_name, min_size=sv.pool_min, max_size=sv.pool_size,
            timeout=sv.pool_timeout_s,
        )  # fmt: skip
        self._share_lock: asyncio.Lock | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self._opened = False

    @classmethod
    def from_config(
        cls,
        config: Config | str | os.PathLike[str] | Mapping[str, Any] | None = None,
        *,
        dsn: str | None = None,
        source: str = "app",
        **kwargs: Any,
    ) -> AsyncRouter:
        """As :meth:`Router.from_config`; then ``await router.open()`` (or ``async with``)."""
        from swarm.store.embedded import resolve_dsn

        cfg = load(config)
        return cls(cfg, dsn or resolve_dsn(cfg), source=source, **kwargs)

    async def open(self) -> AsyncRouter:
        """Open the pool in the running loop, create the serving schema if missing, start the flushes."""
        from swarm.store.schema import aensure_serving

        if self._opened:
            return self
        await self.pool.open()
        self._share_lock = asyncio.Lock()
        await self.pool.run(aensure_serving, what="serving_schema")
        if self.record:
            self._flush_task = asyncio.create_task(self._flush_loop())
        self._opened = True
        return self

    async def __aenter__(self) -> AsyncRouter:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _flush_loop(self) -> None:
        last: float | None = None
        while True:
            if last is None or time.monotonic() - last >= 600:
                await self._retention()
                last = time.monotonic()
            await asyncio.sleep(1.0)
            await self.flush()

    async def _retention(self) -> None:
        days = self.cfg.rollout.query_log_days

        try:
            n = await self.pool.run(lambda c: querylog.aretention(c, days), what="retention")
            if n:
                log.info("recorder.retention", deleted=n, days=days)
        except Exception as e:
            log.warning("recorder.retention_failed", error=type(e).__name__)

    async def flush(self) -> int:
        """Write the searches counted so far (as :meth:`Router.flush`)."""
        from swarm.store.querylog import awrite

        items = self.recorder.take()
        if not items:
            return 0
        rows = self.recorder.rows(items)
        try:
            await self.pool.run(lambda c: awrite(c, rows), what="record")
        except Exception as e:
            log.warning("recorder.flush_failed", error=type(e).__name__)
            self.recorder.failed_flushes += 1
            self.recorder.restore(items)
            return 0
        self.recorder.flushes += 1
        self.recorder.rows_written += len(rows)
        return len(rows)

    async def close(self) -> None:
        if self._flush_task is not None:
            self._flush_task.cancel()
            await asyncio.gather(self._flush_task, return_exceptions=True)
            self._flush_task = None
        if self._opened:
            await self.flush()
        await self.pool.close()
        for a in self.arms.values():
            a.close()
        self._opened = False

    def _need_open(self) -> None:
        if not self._opened:
            raise UsageError("AsyncRouter is not open; `await router.open()` or use `async with` first")

    async def share(self, *, refresh: bool = False) -> Share:
        self._need_open()
        if not refresh and self._share_fresh():
            return self._share  # type: ignore[return-value]
        assert self._share_lock is not None
        if self._share_lock.locked() and self._share is not None and not refresh:
            return self._share
        async with self._share_lock:
            if refresh or not self._share_fresh():

                async def read(c: psycopg.AsyncConnection) -> Share:
                    return await _async_share(self, c)

                self._set_share(await self.pool.run(read, what="share"))
            return self._share  # type: ignore[return-value]

    async def _columns(self) -> dict[str, str]:
        if self._types is None:

            async def read(c: psycopg.AsyncConnection) -> dict[str, str]:
                if self._server is None:
                    cur = await c.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
                    row = await cur.fetchone()
                    self._server = ServerInfo(c.info.server_version, row[0] if row else None)
                cur = await c.execute(
                    "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                    "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                    [self._regclass],
                )
                return dict(await cur.fetchall())

            self._types = await self.pool.run(read, what="columns")
            if not self._types:
                raise SwarmError(f"table {self.cfg.database.table} does not exist (database.table)")
        return self._types

    async def arm(self, caller: str | None) -> Arm:
        share = await self.share()
        return self._describe(share, self._arm_of(share, caller), await self._columns())

    async def _attempt(
        self, arm: str, text: str, k: int, share: Share, where: dict[str, Any], columns: tuple[str, ...]
    ) -> _Attempt:
        a = _Attempt(Hit(), [])
        try:
            types = await self._columns()
            q, ann, iterative = self._plan(arm, share, k, where, columns, types, False)
            t0 = time.perf_counter()
            vec, a.cache_hit = await asyncio.to_thread(self.arms[arm].embed, text)
            t1 = time.perf_counter()
            raw, a.exact = await self.pool.run(lambda c: arun_query(c, q, vec, k, ann, iterative=iterative), what=arm)
            t2 = time.perf_counter()
            a.rows = self._rows(raw, columns)
            a.hit.ids = [r.id for r in a.rows]
            a.hit.embed_ms, a.hit.search_ms = (t1 - t0) * 1000, (t2 - t1) * 1000
        except _NOT_THE_ARM:
            raise
        except _ARM_ERRORS as e:
            if isinstance(e, psycopg.errors.UndefinedColumn):
                self._types = None
            a.hit.error = self._error(e)
        return a

    async def search(
        self,
        query: str,
        k: int | None = None,
        caller: str | None = None,
        *,
        where: Mapping[str, Any] | None = None,
        columns: Sequence[str] = (),
    ) -> SearchResult:
        """As :meth:`Router.search`, awaited."""
        self._need_open()
        k, flt, cols = self._request(query, k, where, columns)
        try:
            if flt or cols:
                self._check_columns(await self._columns(), flt, cols)
            share = await self.share()
            arm = self._arm_of(share, caller)
            a = await self._attempt(arm, query, k, share, flt, cols)
        except Overloaded:
            self.recorder.live.count("shed")
            raise
        self._record(share, arm, a)
        result = self._result(query, caller, share, arm, a)
        if a.hit.error is None:
            return result
        result.errors[arm] = a.hit.error
        if arm == "new" and not share.decommissioned:
            log.warning("router.new_failed", error=a.hit.error, caller=caller)
            b = await self._attempt("legacy", query, k, share, flt, cols)
            self._record(share, "legacy", b)
            if b.hit.error is None:
                return self._merge_fallback(result, b)
            result.errors["legacy"] = b.hit.error
        raise self._failed(result)


async def _async_share(router: _RouterBase, c: psycopg.AsyncConnection) -> Share:
    from swarm.migration.record import _COLUMNS, _from_row  # mig.load, on an async connection

    cur = await c.execute(routing.SHARE, [router._regclass])
    row = await cur.fetchone()
    m = None
    if row is not None:
        share = dict(zip([d.name for d in cur.description or ()], row, strict=True))
        found = await (
            await c.execute(f"SELECT {_COLUMNS} FROM swarm.migrations m WHERE id = %s", [share["migration_id"]])
        ).fetchone()
        m = _from_row(found) if found else None
        use_new, percent = bool(share["use_new"]), float(share["percent"])
    else:
        flag = await (await c.execute(routing.FLAG, [routing.USE_NEW])).fetchone()
        use_new, percent = flag is None or flag[0] == "true", 0.0
    return Share(m, percent, router.cfg.rollout.use_new and use_new)
