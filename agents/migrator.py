"""The data-migrator: embeds a shard's rows with its own GGUF model and writes them back.

A plain class; :mod:`swarm.swarm` wraps it with ``ray.remote`` as a named, detached actor. Reading the next
batch and writing the last one run on a second thread while llama.cpp computes (ctypes releases the GIL), so
the model is busy nearly all the time.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from model.stand_in import StandInEmbedder
from swarm import migration as mig
from swarm.core.config import Config
from swarm.core.log import configure, get_logger
from swarm.core.metrics import Metrics, peak_rss_mb, rss_mb
from swarm.migration.backfill import AlreadyApplied, Batch, BatchResult, Fenced, apply_batch, drain_changes
from swarm.store.db import Database, one

log = get_logger()


@dataclass
class WorkerStats:
    rows: int = 0
    failed: int = 0
    batches: int = 0
    tokens: int = 0
    embed_seconds: float = 0.0
    shards: int = 0
    fenced: int = 0
    skipped_stale: int = 0
    # A batch's distinct texts each get their vector once: from a cache (this migrator's LRU or the swarm's
    # shared one: a model computation avoided) or from the model. A row repeating an earlier row of its batch is
    # neither: it is a batch repeat (deduplicated before the caches and the model, with or without a cache).
    cache_hits: int = 0  # distinct texts whose vector came from a cache, not from the model
    cache_misses: int = 0  # texts the model computed
    batch_repeats: int = 0  # rows whose text an earlier row of the same batch had
    shared_hits: int = 0  # of cache_hits: vectors another migrator computed
    started: float = field(default_factory=time.monotonic)


class DataMigrator:
    """Embeds shards. One model per migrator, loaded once in ``__init__``."""

    kind = "data-migrator"

    def __init__(
        self, name: str, payload: dict[str, Any], *, rehearse: bool = False, n_threads: int | None = None
    ) -> None:
        configure(json=True, actor=name)
        self.name = name
        self.cfg = Config.from_payload(payload)
        self.dsn: str = payload["dsn"]
        self.rehearse = rehearse
        self.db = Database(self.dsn, application_name=f"swarm:{name}", retry_s=self.cfg.swarm.db_retry_s)
        # Each run_shard call opens its own connections (a restarted coordinator can hand a shard again to a
        # migrator that still runs it: two calls sharing one connection would nest their transactions); the
        # change queue's drain has its own, used by one drain at a time.
        self.drain_db = self._connection("w")
        self._drain_lock = threading.Lock()
        self._active: dict[tuple[int, int], tuple[int, threading.Event]] = {}
        self._active_lock = threading.Lock()
        self._limiter = _RateLimiter(0.0)
        self.metrics = Metrics(name)
        self.stats = WorkerStats()
        self._reported: dict[str, int] = {}  # the cache counts already sent to the Ray metrics
        rss_before = rss_mb()
        self._lock = threading.Lock()  # one llama.cpp context: one batch at a time
        self._stand_in = StandInEmbedder(self.cfg.new_dimension)
        if rehearse:
            self.embedder: Any = self._stand_in
        else:
            from model.factory import embedder_for

            # strict: this migrator asked Ray for GPUs; a llama.cpp without a GPU backend is a config error here.
            self.embedder = embedder_for(self.cfg, "new", n_threads=n_threads, strict_device=True)
        self.model_mb = max(0.0, rss_mb() - rss_before)
        self._shared = self._shared_cache()
        self._last_embed_s = 0.0
        self._migrations: dict[int, mig.Migration] = {}
        self._register()
        log.info(
            "migrator.ready",
            model=getattr(self.embedder, "model_id", "?"),
            rss_mb=round(rss_mb(), 1),
            model_mb=round(self.model_mb, 1),
        )

    # -- bookkeeping ---------------------------------------------------------------------------------------
    def _register(self, state: str = "idle") -> None:
        import socket

        def go(conn: psycopg.Connection) -> None:
            conn.execute(
                "INSERT INTO swarm.agents (name, kind, node, pid, model_id, rss_mb, model_mb, state) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET node = EXCLUDED.node, "
                "pid = EXCLUDED.pid, model_id = EXCLUDED.model_id, rss_mb = EXCLUDED.rss_mb, "
                "model_mb = EXCLUDED.model_mb, state = EXCLUDED.state, seen_at = now()",
                [
                    self.name,
                    self.kind,
                    socket.gethostname(),
                    os.getpid(),
                    getattr(self.embedder, "model_id", "?"),
                    rss_mb(),
                    self.model_mb,
                    state,
                ],
            )

        self.db.run(go, what="register")

    def info(self) -> dict[str, Any]:
        """Who this migrator is and what it costs (pid, node, memory, throughput so far)."""
        import socket

        s = self.stats
        est = getattr(self.embedder, "stats", None)
        try:
            import ray

            node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        except Exception:
            node_id = None
        return {
            "name": self.name,
            "node_id": node_id,
            "pid": os.getpid(),
            "node": socket.gethostname(),
            "model": getattr(self.embedder, "model_id", "?"),
            "dim": getattr(self.embedder, "dim", None),
            "rss_mb": round(rss_mb(), 1),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "model_mb": round(self.model_mb, 1),
            "rows": s.rows,
            "failed": s.failed,
            "batches": s.batches,
            "shards": s.shards,
            "fenced": s.fenced,
            "tokens": getattr(est, "tokens", s.tokens),
            "embed_seconds": round(getattr(est, "seconds", s.embed_seconds), 3),
            "cache_hits": s.cache_hits,
            "cache_misses": s.cache_misses,
            "batch_repeats": s.batch_repeats,
            "shared_cache_hits": s.shared_hits,
            "truncated": getattr(est, "truncated", 0),
        }

    def ping(self) -> str:
        return self.name

    def close(self) -> None:
        """Close this migrator's connections (the per-shard ones close when their shard ends)."""
        self.db.close()
        self.drain_db.close()

    def _shared_cache(self) -> Any:
        """The coordinator's shared cache, when this migrator runs as a Ray actor and the config wants it."""
        e = self.cfg.embedding
        if self.rehearse or not e.shared_cache or e.cache_size <= 0:
            return None
        try:
            import ray

            if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
                return None
        except Exception:
            return None
        from agents.cache import CacheClient

        return CacheClient(self.name)

    def _embed(self, m: mig.Migration, texts: list[str | None]) -> tuple[np.ndarray, list[str | None], int]:
        """Vectors, per-row errors, and how many rows were longer than the model's context (truncated)."""
        embedder = self._stand_in if m.rehearsal else self.embedder
        if embedder is self._stand_in and not m.rehearsal:
            raise RuntimeError(f"{self.name} was spawned for rehearsals only and has no model")
        t0 = time.monotonic()
        try:
            if embedder is self._stand_in or not getattr(embedder, "cache_enabled", False):
                long: list[int] = []
                with self._lock:
                    vectors, errors = embedder.embed_many(texts, truncated=long)
                embedded = [t for t, e in zip(texts, errors, strict=True) if e is None]
                distinct = len(set(embedded))  # embed_many computes identical texts of one call once
                self.stats.cache_misses += distinct
                self.stats.batch_repeats += len(embedded) - distinct
                return vectors, errors, len(long)
            return self._embed_cached(embedder, texts)
        finally:
            self._last_embed_s = time.monotonic() - t0

    def _embed_cached(self, embedder: Any, texts: list[str | None]) -> tuple[np.ndarray, list[str | None], int]:
        """Each distinct text once: from this migrator's LRU, else the swarm's shared cache, else the model
        (claiming it, so the other migrators wait for this result instead of computing it too)."""
        from agents.cache import cache_key
        from model.embedder import unembeddable

        out = np.zeros((len(texts), embedder.dim), dtype=np.float32)
        errors: list[str | None] = [None] * len(texts)
        groups: dict[str, list[int]] = {}
        for i, t in enumerate(texts):
            reason = unembeddable(t)
            if reason:
                errors[i] = reason
            else:
                groups.setdefault(t, []).append(i)  # type: ignore[arg-type]
        got: dict[str, tuple[np.ndarray, bool]] = {}
        for t in groups:
            hit = embedder.cached(t)
            if hit is not None:
                got[t] = hit
        computed: set[str] = set()
        failed: dict[str, str] = {}

        def compute(batch: list[str]) -> dict[bytes, tuple[bytes, bool]]:
            long: list[int] = []
            with self._lock:
                v, e = embedder.embed_many(batch, truncated=long, use_cache=True)
            fresh = {}
            for j, t in enumerate(batch):
                computed.add(t)
                if e[j] is not None:
                    failed[t] = e[j]
                    continue
                got[t] = (v[j], j in long)
                fresh[t] = (v[j].astype(np.float32).tobytes(), j in long)
            return {keys[t]: val for t, val in fresh.items()}

        rest = [t for t in groups if t not in got]
        keys = {t: cache_key(embedder.model_id, embedder.document_prefix, t) for t in rest}
        by_key = {k: t for t, k in keys.items()}
        if rest and self._shared is not None:
            found, mine, theirs = self._shared.claim([keys[t] for t in rest])
            self._take_shared(embedder, found, by_key, got)
            mine_texts = [by_key[k] for k in mine]
            if mine_texts:
                try:
                    self._shared.put(compute(mine_texts))
                finally:
                    self._shared.release([keys[t] for t in mine_texts if t in failed or t not in got])
            if theirs:
                arrived = self._shared.wait(theirs, timeout=max(30.0, 4 * self._last_embed_s))
                self._take_shared(embedder, arrived, by_key, got)
            rest = [t for t in groups if t not in got and t not in computed]
        if rest:
            compute(rest)
        truncated = 0
        for t, rows in groups.items():
            if t in got:
                vec, long_ = got[t]
                out[rows] = vec
                truncated += len(rows) if long_ else 0
                if t in computed:
                    self.stats.cache_misses += 1
                else:
                    self.stats.cache_hits += 1
                self.stats.batch_repeats += len(rows) - 1
            else:
                for i in rows:
                    errors[i] = failed.get(t, "not embedded")
        return out, errors, truncated

    def _take_shared(
        self,
        embedder: Any,
        found: dict[bytes, tuple[bytes, bool]],
        by_key: dict[bytes, str],
        got: dict[str, tuple[np.ndarray, bool]],
    ) -> None:
        for k, (raw, long_) in found.items():
            t = by_key.get(k)
            if t is None:
                continue
            vec = np.frombuffer(raw, dtype=np.float32)
            if vec.shape[0] != embedder.dim:
                continue
            got[t] = (vec, long_)
            embedder.remember(t, vec, long_)
            self.stats.shared_hits += 1

    def _migration(self, mid: int, *, fresh: bool = False) -> mig.Migration:
        """The migration record (cached; ``fresh`` reads it again: a decommission may rename the column)."""
        if fresh or mid not in self._migrations:
            self._migrations[mid] = self.db.run(lambda c: mig.load(c, mid), what="load")
            m = self._migrations[mid]
            if not m.rehearsal and m.dimension != self.embedder.dim:
                from swarm.core.errors import DimensionMismatch

                raise DimensionMismatch(
                    self.cfg.embedding.model_path,
                    m.dimension,
                    self.embedder.dim,
                    where="the migration's column",
                )
        return self._migrations[mid]

    def _connection(self, role: str) -> Database:
        return Database(
            self.dsn,
            application_name=f"swarm:{self.name}:{role}",
            retry_s=self.cfg.swarm.db_retry_s,
            idle_in_transaction_timeout_ms=self.cfg.swarm.idle_in_transaction_timeout_ms,
        )

    def _turn(self, migrators: int | None) -> None:
        """Wait until this migrator may write again under its share of ``swarm.max_rows_per_second`` (backfill
        and drain alike); :meth:`_spent` then accounts the rows written."""
        limit = self.cfg.swarm.max_rows_per_second
        if limit <= 0:
            return
        self._limiter.set_rate(limit / max(1, migrators or self.cfg.swarm.migrators))
        self._limiter.wait_turn()

    def _spent(self, rows: int) -> None:
        if self.cfg.swarm.max_rows_per_second > 0:
            self._limiter.spent(rows)

    def _take(self, mid: int, shard_id: int, attempt: int) -> threading.Event:
        """Register this run of a shard; a run of an older attempt still going on here is told to stop."""
        stop = threading.Event()
        with self._active_lock:
            old = self._active.get((mid, shard_id))
            if old is not None and old[0] < attempt:
                old[1].set()
            if old is None or old[0] < attempt:
                self._active[(mid, shard_id)] = (attempt, stop)
            else:
                stop.set()  # a newer attempt already runs here: this one is stale
        return stop

    def _leave(self, mid: int, shard_id: int, stop: threading.Event) -> None:
        with self._active_lock:
            cur = self._active.get((mid, shard_id))
            if cur is not None and cur[1] is stop:
                del self._active[(mid, shard_id)]

    # -- the work ------------------------------------------------------------------------------------------
    def run_shard(self, mid: int, shard_id: int, attempt: int, migrators: int | None = None) -> dict[str, Any]:
        """Migrate one shard from its checkpoint to its end. Idempotent; fenced by ``attempt``.

        ``migrators`` is how many migrators share ``swarm.max_rows_per_second`` now (default: the config's).
        """
        m = self._migration(mid)
        fenced_here = self._take(mid, shard_id, attempt)
        rdb, wdb = self._connection("r"), self._connection("w")  # ":w" marks every write session
        try:
            return self._run_shard(m, shard_id, attempt, migrators, fenced_here, rdb, wdb)
        finally:
            self._leave(mid, shard_id, fenced_here)
            rdb.close()
            wdb.close()

    def _run_shard(
        self,
        m: mig.Migration,
        shard_id: int,
        attempt: int,
        migrators: int | None,
        fenced_here: threading.Event,
        rdb: Database,
        wdb: Database,
    ) -> dict[str, Any]:
        mid = m.id
        shard = rdb.run(
            lambda c: c.execute(
                "SELECT lo, hi, last_key FROM swarm.shards WHERE migration_id = %s AND shard_id = %s",
                [mid, shard_id],
            ).fetchone(),
            what="shard",
        )
        lo, hi, last_key = one(shard, f"shard {shard_id} of migration {mid}")
        batch_size = self.cfg.embedding.batch_size
        started = time.monotonic()
        rows = failed = 0
        self._register("running")
        reader: queue.Queue[Batch | None | BaseException] = queue.Queue(maxsize=2)
        stop = threading.Event()

        def read_ahead() -> None:
            after = last_key if last_key is not None else lo
            checkpoint = last_key
            try:
                while not stop.is_set():
                    q, params = m.target.read_batch(after, hi, batch_size)

                    def read(
                        c: psycopg.Connection, q: sql.Composed = q, p: list[object] = params
                    ) -> list[tuple[Any, ...]]:
                        return c.execute(q, p).fetchall()

                    got = rdb.run(read, what="read_batch")
                    if not got:
                        reader.put(None)
                        return
                    b = Batch([r[0] for r in got], [r[1] for r in got], got[-1][0], prev_key=checkpoint)
                    after = checkpoint = b.last_key
                    reader.put(b)
            except BaseException as e:  # surfaced in the main thread
                reader.put(e)

        t = threading.Thread(target=read_ahead, name=f"{self.name}-reader", daemon=True)
        t.start()
        pending: Future[tuple[int, int]] | None = None
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-writer") as writer:
                while True:
                    item = reader.get()
                    if isinstance(item, BaseException):
                        raise item
                    if item is None:
                        break
                    if fenced_here.is_set():
                        raise Fenced()
                    t0 = time.monotonic()
                    vectors, errors, truncated = self._embed(m, item.texts)
                    embed_s = time.monotonic() - t0
                    if pending is not None:
                        r, f = pending.result()  # keeps writes in order; raises Fenced
                        rows, failed = rows + r, failed + f
                    self._turn(migrators)  # the model computed the batch meanwhile; only the write waits
                    pending = writer.submit(
                        self._write, wdb, m, shard_id, attempt, item, vectors, errors, embed_s, truncated
                    )
                    self._spent(len(item.ids))
                if pending is not None:
                    r, f = pending.result()
                    rows, failed = rows + r, failed + f
            self._finish_shard(wdb, mid, shard_id, attempt)
        except Fenced:
            self.stats.fenced += 1
            log.warning("shard.fenced", migration=mid, shard=shard_id, attempt=attempt)
            return {"shard": shard_id, "fenced": True, "rows": rows, "failed": failed}
        finally:
            stop.set()
            while t.is_alive():
                try:
                    reader.get_nowait()
                except queue.Empty:
                    t.join(timeout=0.05)
            self._register("idle")
        self.stats.shards += 1
        self.metrics.inc("shards_done", 1, mid)
        seconds = time.monotonic() - started
        log.info("shard.done", migration=mid, shard=shard_id, rows=rows, failed=failed, seconds=round(seconds, 2))
        return {"shard": shard_id, "fenced": False, "rows": rows, "failed": failed, "seconds": seconds}

    def _write(
        self,
        wdb: Database,
        m: mig.Migration,
        shard_id: int,
        attempt: int,
        b: Batch,
        vectors: np.ndarray,
        errors: list[str | None],
        embed_s: float,
        truncated: int = 0,
    ) -> tuple[int, int]:
        """One transaction: the vectors, the dead letters, the checkpoint (fenced), the batch record."""

        def go(conn: psycopg.Connection) -> BatchResult:
            try:
                with conn.transaction():
                    return apply_batch(
                        conn,
                        m,
                        b,
                        vectors,
                        errors,
                        worker=self.name,
                        embed_seconds=embed_s,
                        truncated=truncated,
                        shard=(shard_id, attempt),
                    )
            except AlreadyApplied as e:  # rolled back: the first commit of this batch already counted it
                log.warning("batch.already_applied", migration=m.id, shard=shard_id, last_key=b.last_key)
                return e.result

        r = wdb.run(go, what="write_batch")
        self._count(m, r, shard_id)
        return r.ok, r.failed

    def _count(self, m: mig.Migration, r: BatchResult, shard_id: int | None) -> None:
        """A committed batch in this migrator's stats, its Ray metrics and its log."""
        self.stats.rows += r.ok
        self.stats.failed += r.failed
        self.stats.batches += 1
        self.stats.skipped_stale += r.ok - r.written
        self.metrics.inc("rows_migrated", r.written, m.id)
        self.metrics.inc("rows_failed", r.failed, m.id)
        self.metrics.inc("batches", 1, m.id)
        est = getattr(self.embedder, "stats", None)
        if est is not None and getattr(est, "seconds", None):
            self.metrics.set("tokens_per_second", est.tokens / max(est.seconds, 1e-9), m.id)
        # This migrator's own counts (WorkerStats), not the embedder's: the migrator reads the embedder's LRU
        # through cached(), which counts nothing, and the shared cache and the batch repeats are outside it.
        for name in ("cache_hits", "cache_misses", "batch_repeats"):
            now = getattr(self.stats, name)
            self.metrics.inc(name, now - self._reported.get(name, 0), m.id)
            self._reported[name] = now
        log.info(
            "batch.committed",
            migration=m.id,
            shard=shard_id,
            batch=self.stats.batches,
            rows=r.ok,
            failed=r.failed,
            written=r.written,
            embed_s=round(r.embed_seconds, 3),
        )

    def _finish_shard(self, wdb: Database, mid: int, shard_id: int, attempt: int) -> None:
        def go(conn: psycopg.Connection) -> None:
            r = conn.execute(
                "UPDATE swarm.shards SET state = 'done', finished_at = now(), updated_at = now() "
                "WHERE migration_id = %s AND shard_id = %s AND attempt = %s AND state = 'running'",
                [mid, shard_id, attempt],
            )
            if r.rowcount != 1:
                raise Fenced()

        wdb.run(go, what="finish_shard")

    def drain_changes(self, mid: int, limit: int | None = None, migrators: int | None = None) -> int:
        """Embed rows the application inserted or changed (queued by the sync trigger): one round of
        :func:`swarm.migration.backfill.drain_changes`. Returns the queue entries done."""
        m = self._migration(mid, fresh=True)
        with self._drain_lock:
            self._turn(migrators)
            done, r = drain_changes(
                self.drain_db,
                m,
                lambda texts: self._embed(m, texts),
                worker=self.name,
                limit=limit or self.cfg.embedding.batch_size,
            )
            if r is not None:
                self._count(m, r, None)
            self._spent(done)
        return done


class _RateLimiter:
    """Keeps this migrator under its share of ``swarm.max_rows_per_second``: a write of n rows may start only
    n / rate seconds after the previous one started. Nothing is banked while idle, so no window of time ever
    sees more than the rate plus one batch (a token bucket would let an idle migrator burst)."""

    def __init__(self, rows_per_second: float) -> None:
        self.rate = rows_per_second
        self._lock = threading.Lock()
        self._next = 0.0  # monotonic time before which the next write may not start

    def set_rate(self, rows_per_second: float) -> None:
        self.rate = rows_per_second

    def wait_turn(self) -> None:
        with self._lock:
            ahead = self._next - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)

    def spent(self, rows: int) -> None:
        """A write of ``rows`` started now (or just ended): the next may start ``rows / rate`` seconds later."""
        if self.rate <= 0 or rows <= 0:
            return
        with self._lock:
            self._next = max(self._next, time.monotonic()) + rows / self.rate
