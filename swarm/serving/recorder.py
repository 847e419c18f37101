"""Recording searches without slowing them: counters in memory, flushed about once a second.

A search adds itself to the counters of its key (minute, migration, source, arm, share) under a lock held for
a few dictionary operations: no I/O, no wait on the database. A background thread (:class:`Flusher`) takes
the counters every ``interval`` seconds and upserts them into ``swarm.query_rollup``
(:mod:`swarm.store.querylog`); if the database is away the counters go back and are written with the next
flush. Memory is bounded: at most ``max_keys`` keys wait (a key is a minute of one arm of one source, so a day
of an unreachable database is ~3,000); past that a search is counted in ``dropped`` and not kept.

``rollout.record_sample`` below 1 records only that share of searches (uniformly, errors included, so rates
and percentiles stay unbiased); every search is still counted in ``seen``.

The same calls feed :class:`LiveMetrics`, the cumulative per-arm counters and histograms ``GET /metrics``
shows.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from swarm.core.log import get_logger
from swarm.store.querylog import BOUNDS_MS, NBUCKETS, bucket_of

log = get_logger()


@dataclass
class _Counts:
    seen: int = 0
    queries: int = 0
    errors: int = 0
    dropped: int = 0
    cache_hits: int = 0
    cache_known: int = 0
    latency_sum_ms: float = 0.0
    search_sum_ms: float = 0.0
    embed_sum_ms: float = 0.0
    latency_hist: list[int] = field(default_factory=lambda: [0] * NBUCKETS)
    search_hist: list[int] = field(default_factory=lambda: [0] * NBUCKETS)
    embed_hist: list[int] = field(default_factory=lambda: [0] * NBUCKETS)

    def merge(self, o: _Counts) -> None:
        for name in ("seen", "queries", "errors", "dropped", "cache_hits", "cache_known"):
            setattr(self, name, getattr(self, name) + getattr(o, name))
        for name in ("latency_sum_ms", "search_sum_ms", "embed_sum_ms"):
            setattr(self, name, getattr(self, name) + getattr(o, name))
        for name in ("latency_hist", "search_hist", "embed_hist"):
            mine, theirs = getattr(self, name), getattr(o, name)
            for i, n in enumerate(theirs):
                mine[i] += n

    def row(self, key: tuple[Any, ...]) -> list[Any]:
        return [
            *key,
            self.seen,
            self.queries,
            self.errors,
            self.dropped,
            self.cache_hits,
            self.cache_known,
            self.latency_sum_ms,
            self.search_sum_ms,
            self.embed_sum_ms,
            self.latency_hist,
            self.search_hist,
            self.embed_hist,
        ]


class LiveMetrics:
    """Cumulative counters of this process since it started (what Prometheus scrapes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[str, int] = {"legacy": 0, "new": 0}
        self.errors: dict[str, int] = {"legacy": 0, "new": 0}
        self.latency_sum_ms: dict[str, float] = {"legacy": 0.0, "new": 0.0}
        self.latency_hist: dict[str, list[int]] = {"legacy": [0] * NBUCKETS, "new": [0] * NBUCKETS}
        self.fallbacks = 0
        self.shed = 0
        self.exact_fallbacks = 0

    def add(self, arm: str, ok: bool, latency_ms: float) -> None:
        with self._lock:
            self.requests[arm] = self.requests.get(arm, 0) + 1
            if not ok:
                self.errors[arm] = self.errors.get(arm, 0) + 1
                return
            self.latency_sum_ms[arm] = self.latency_sum_ms.get(arm, 0.0) + latency_ms
            self.latency_hist.setdefault(arm, [0] * NBUCKETS)[bucket_of(latency_ms)] += 1

    def count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(self.requests),
                "errors": dict(self.errors),
                "latency_sum_ms": dict(self.latency_sum_ms),
                "latency_hist": {a: list(h) for a, h in self.latency_hist.items()},
                "fallbacks": self.fallbacks,
                "shed": self.shed,
                "exact_fallbacks": self.exact_fallbacks,
            }


class Recorder:
    """Per-key counters of the searches of one router, waiting for the next flush."""

    def __init__(self, source: str, *, sample: float = 1.0, max_keys: int = 10_000, clock: Any = time.time) -> None:
        self.source = source
        self.sample = float(sample)
        self.max_keys = max_keys
        self.clock = clock
        self.live = LiveMetrics()
        self._lock = threading.Lock()
        self._pending: dict[tuple[Any, ...], _Counts] = {}
        self.dropped = 0  # searches not kept because max_keys keys were waiting
        self.flushes = 0
        self.rows_written = 0
        self.failed_flushes = 0

    def _key(self, migration_id: int | None, arm: str, percent: float) -> tuple[Any, ...]:
        now = self.clock()
        minute = datetime.fromtimestamp(now - now % 60, tz=UTC)
        return (minute, int(migration_id or 0), self.source, arm, float(percent))

    def record(
        self,
        *,
        migration_id: int | None,
        arm: str,
        percent: float,
        ok: bool,
        embed_ms: float = 0.0,
        search_ms: float = 0.0,
        cache_hit: bool | None = None,
    ) -> None:
        """Count one search; never blocks on I/O, never raises."""
        latency = embed_ms + search_ms
        self.live.add(arm, ok, latency)
        sampled = self.sample >= 1.0 or random.random() < self.sample
        key = self._key(migration_id, arm, percent)
        with self._lock:
            c = self._pending.get(key)
            if c is None:
                if len(self._pending) >= self.max_keys:
                    self.dropped += 1
                    return
                c = self._pending[key] = _Counts()
            c.seen += 1
            if not sampled:
                return
            c.queries += 1
            if cache_hit is not None:
                c.cache_known += 1
                c.cache_hits += bool(cache_hit)
            if not ok:
                c.errors += 1
                return
            c.latency_sum_ms += latency
            c.search_sum_ms += search_ms
            c.embed_sum_ms += embed_ms
            c.latency_hist[bucket_of(latency)] += 1
            c.search_hist[bucket_of(search_ms)] += 1
            c.embed_hist[bucket_of(embed_ms)] += 1

    def take(self) -> list[tuple[tuple[Any, ...], _Counts]]:
        """Everything waiting, removed (write it, or :meth:`restore` it when the write failed)."""
        with self._lock:
            pending, self._pending = self._pending, {}
            if pending and self.dropped:
                # Account the searches dropped meanwhile on one of the keys being written.
                next(iter(pending.values())).dropped += self.dropped
                self.dropped = 0
        return list(pending.items())

    def restore(self, items: list[tuple[tuple[Any, ...], _Counts]]) -> None:
        """Put back what a failed flush took, merged with what came since (bounded by ``max_keys``)."""
        with self._lock:
            for key, counts in items:
                mine = self._pending.get(key)
                if mine is not None:
                    mine.merge(counts)
                elif len(self._pending) < self.max_keys:
                    self._pending[key] = counts
                else:
                    self.dropped += counts.seen

    @staticmethod
    def rows(items: list[tuple[tuple[Any, ...], _Counts]]) -> list[list[Any]]:
        return [c.row(k) for k, c in items]

    @property
    def waiting(self) -> int:
        with self._lock:
            return sum(c.seen for c in self._pending.values())


class Flusher(threading.Thread):
    """Writes a :class:`Recorder`'s counters every ``interval`` seconds through ``db`` (a pool or a Database),
    and deletes the record older than ``retention_days`` once at start and every ``retention_every`` seconds."""

    def __init__(
        self,
        recorder: Recorder,
        db: Any,
        *,
        interval: float = 1.0,
        retention_days: float = 7.0,
        retention_every: float = 600.0,
    ) -> None:
        super().__init__(name=f"swarm-recorder-{recorder.source}", daemon=True)
        self.recorder, self.db, self.interval = recorder, db, interval
        self.retention_days, self.retention_every = retention_days, retention_every
        self._stop_event = threading.Event()
        self._flush_lock = threading.Lock()
        self._last_retention = 0.0

    def flush(self) -> int:
        """Write what is waiting now; returns the rows written (0 when the write failed: kept for next time)."""
        from swarm.core.errors import SwarmError
        from swarm.store.querylog import write

        with self._flush_lock:
            items = self.recorder.take()
            if not items:
                return 0
            rows = self.recorder.rows(items)
            try:
                self.db.run(lambda c: write(c, rows), what="record")
            except Exception as e:  # the database away, the pool busy: keep the counts, try again later
                if not isinstance(e, SwarmError):
                    log.warning("recorder.flush_failed", error=type(e).__name__)
                self.recorder.failed_flushes += 1
                self.recorder.restore(items)
                return 0
            self.recorder.flushes += 1
            self.recorder.rows_written += len(rows)
            return len(rows)

    def _retention(self) -> None:
        from swarm.store.querylog import retention

        now = time.monotonic()
        if self._last_retention and now - self._last_retention < self.retention_every:
            return
        self._last_retention = now
        try:
            n = self.db.run(lambda c: retention(c, self.retention_days), what="retention")
            if n:
                log.info("recorder.retention", deleted=n, days=self.retention_days)
        except Exception as e:
            log.warning("recorder.retention_failed", error=type(e).__name__)

    def run(self) -> None:
        self._retention()
        while not self._stop_event.wait(self.interval):
            self.flush()
            self._retention()

    def stop(self, *, flush: bool = True) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=10)
        if flush:
            self.flush()


__all__ = ["BOUNDS_MS", "Flusher", "LiveMetrics", "Recorder"]
