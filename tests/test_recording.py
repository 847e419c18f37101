"""Recording searches never blocks them: 200 concurrent searches are counted in memory and written in a few
upserts, a search goes through while the record's table is locked, the record is bounded, sampled as
configured, kept for ``rollout.query_log_days``, and its histograms give back the percentiles."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg

from swarm.serving.recorder import Recorder
from swarm.serving.rollout import set_percent
from swarm.serving.router import AsyncRouter, Router
from swarm.store.querylog import BOUNDS_MS, NBUCKETS, arm_stats, bucket_of, quantile
from tests.test_router import Migrated, migrated, quality_root  # noqa: F401  (fixtures)


def _rollup(dsn: str) -> dict[str, tuple[int, int, int]]:
    with psycopg.connect(dsn, autocommit=True) as c:
        return {
            arm: (int(seen), int(q), int(e))
            for arm, seen, q, e in c.execute(
                "SELECT arm, sum(seen), sum(queries), sum(errors) FROM swarm.query_rollup GROUP BY arm"
            ).fetchall()
        }


def _wait_for(what: str, pred, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


# ------------------------------------------------------------------------------------------------------------
# In memory (no database)
# ------------------------------------------------------------------------------------------------------------
def test_histogram_percentiles_read_back_within_their_bucket() -> None:
    hist = [0] * NBUCKETS
    samples = [0.3] * 50 + [4.0] * 40 + [40.0] * 9 + [30_000.0]  # 100 searches
    for ms in samples:
        hist[bucket_of(ms)] += 1
    assert bucket_of(0.5) == 0 and bucket_of(0.51) == 1 and bucket_of(1e9) == len(BOUNDS_MS)
    p50, p95, p99, p100 = (quantile(hist, q) for q in (0.5, 0.95, 0.99, 1.0))
    assert 0 < p50 <= 0.5  # the 50th search is in the first bucket (0, 0.5]
    assert 30 < p95 <= 50  # in (30, 50], where the 40 ms searches are
    assert 30 < p99 <= 50
    assert p100 == BOUNDS_MS[-1]  # the open last bucket reads as its lower bound
    assert quantile([0] * NBUCKETS, 0.5) is None


def test_the_buffer_is_bounded_and_drops_with_a_count() -> None:
    now = [1_000_000.0]
    rec = Recorder("serve", max_keys=2, clock=lambda: now[0])
    for minute in range(5):  # five minutes of a database that is away: only two keys are kept
        now[0] = 1_000_000.0 + 60 * minute
        for _ in range(10):
            rec.record(migration_id=1, arm="new", percent=10, ok=True, embed_ms=1, search_ms=2)
    assert rec.dropped == 30 and rec.waiting == 20
    items = rec.take()
    assert sum(c.seen for _, c in items) == 20 and sum(c.dropped for _, c in items) == 30
    rec.record(migration_id=1, arm="new", percent=10, ok=False)  # minute 4: a key of its own
    rec.restore(items)  # the write failed: back with what came since, still bounded (minute 1 no longer fits)
    assert rec.waiting == 11 and rec.dropped == 10
    assert rec.live.snapshot()["requests"]["new"] == 51 and rec.live.snapshot()["errors"]["new"] == 1


def test_sampling_records_a_share_and_counts_every_search() -> None:
    rec = Recorder("serve", sample=0.25)
    for i in range(4000):
        rec.record(migration_id=1, arm="legacy", percent=0, ok=i % 10 != 0, search_ms=3)
    (_, c), = rec.take()  # fmt: skip
    assert c.seen == 4000
    assert 850 <= c.queries <= 1150  # Binomial(4000, 0.25): sd 27
    assert 0.06 <= c.errors / c.queries <= 0.14  # the error rate of the sample is the traffic's (10%)


# ------------------------------------------------------------------------------------------------------------
# Through the database
# ------------------------------------------------------------------------------------------------------------
def test_200_concurrent_searches_are_recorded_without_an_insert_each(migrated: Migrated) -> None:  # noqa: F811
    set_percent(migrated.db(), migrated.migration(), 50)
    router = Router(migrated.cfg, migrated.dsn, source="serve")
    texts = migrated.queries()
    n = 200
    start = threading.Barrier(n)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        start.wait()
        try:
            router.search(texts[i % len(texts)], k=5, caller=f"c-{i}")
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    router.close()
    assert not errors, errors[:3]
    rec = router.recorder
    counts = _rollup(migrated.dsn)
    assert sum(q for _, q, _ in counts.values()) == n and sum(s for s, _, _ in counts.values()) == n
    assert set(counts) == {"legacy", "new"} and all(e == 0 for _, _, e in counts.values())
    # A handful of upserts (one per arm and minute per flush), not 200 INSERTs.
    assert rec.flushes <= 20 and rec.rows_written <= 2 * rec.flushes + 2 and rec.rows_written < n / 10
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        assert c.execute("SELECT to_regclass('swarm.query_log')").fetchone()[0] is None  # no per-search log
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        stats = arm_stats(c, migration_id=migrated.mid, sources=("serve",))
    assert stats["new"]["queries"] + stats["legacy"]["queries"] == n
    for s in stats.values():
        assert 0 < s["p50_latency_ms"] <= s["p95_latency_ms"] <= s["p99_latency_ms"]
        assert s["p95_search_ms"] is not None and s["p95_embed_ms"] is not None


def test_a_search_goes_through_while_the_record_is_locked(migrated: Migrated) -> None:  # noqa: F811
    """Someone holds an exclusive lock on the record's table (a long migration of it, a VACUUM FULL): searches
    are answered all the same, their counts wait in memory, and reach the table once it is free."""
    router = Router(migrated.cfg, migrated.dsn, source="serve")
    texts = migrated.queries()
    router.search(texts[0], k=3, caller="before")
    router.flush()
    done: list[int] = []
    with psycopg.connect(migrated.dsn) as locker:
        locker.execute("LOCK TABLE swarm.query_rollup IN ACCESS EXCLUSIVE MODE")

        def searches() -> None:
            for i in range(20):
                done.append(len(router.search(texts[i % len(texts)], k=3, caller=f"locked-{i}").ids))

        t = threading.Thread(target=searches)
        t.start()
        t.join(120)
        assert not t.is_alive(), "searches waited for the record's lock"
        assert done == [3] * 20
        assert router.flush() == 0  # the write cannot take its lock: nothing written, the counts kept
        locker.rollback()
    router.close()  # flushes whatever the background flusher has not written yet
    assert _rollup(migrated.dsn)["legacy"][1] == 21
    assert router.recorder.failed_flushes >= 1


def _old_and_recent_minutes(dsn: str) -> tuple[datetime, datetime]:
    """Two rollup minutes, 10 and 2 days old: the record of ``query_log_days = 7`` keeps the second."""
    hist = [0] * NBUCKETS
    old, recent = datetime.now(UTC) - timedelta(days=10), datetime.now(UTC) - timedelta(days=2)
    with psycopg.connect(dsn, autocommit=True) as c:
        for minute in (old, recent):
            c.execute(
                "INSERT INTO swarm.query_rollup (minute, source, arm, seen, queries, latency_hist, search_hist, "
                "embed_hist) VALUES (date_trunc('minute', %s::timestamptz), 'serve', 'legacy', 1, 1, %s, %s, %s)",
                [minute, hist, hist, hist],
            )
    return old, recent


def test_the_record_is_kept_for_query_log_days(migrated: Migrated) -> None:  # noqa: F811
    old, recent = _old_and_recent_minutes(migrated.dsn)
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        # Rows an earlier swarm wrote to its per-search log go by the same rule.
        c.execute("CREATE TABLE swarm.query_log (id bigserial PRIMARY KEY, at timestamptz NOT NULL)")
        c.execute("INSERT INTO swarm.query_log (at) VALUES (%s), (%s)", [old, recent])
    router = Router(migrated.config(rollout={"query_log_days": 7}), migrated.dsn, source="serve")

    def minutes() -> list[datetime]:
        with psycopg.connect(migrated.dsn, autocommit=True) as c:
            return [r[0] for r in c.execute("SELECT minute FROM swarm.query_rollup ORDER BY 1").fetchall()]

    try:
        _wait_for("the 10-day-old minute deleted", lambda: len(minutes()) == 1)
    finally:
        router.close()
    assert minutes()[0] > datetime.now(UTC) - timedelta(days=3)
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM swarm.query_log").fetchone()[0] == 1


def test_an_async_router_keeps_the_record_for_query_log_days_too(migrated: Migrated) -> None:  # noqa: F811
    _old_and_recent_minutes(migrated.dsn)

    def minutes() -> int:
        with psycopg.connect(migrated.dsn, autocommit=True) as c:
            return int(c.execute("SELECT count(*) FROM swarm.query_rollup").fetchone()[0])

    async def go() -> int:
        cfg = migrated.config(rollout={"query_log_days": 7})
        async with AsyncRouter(cfg, migrated.dsn, source="serve"):
            deadline = time.monotonic() + 30
            while minutes() != 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        return minutes()

    assert asyncio.run(go()) == 1


def test_the_configured_sample_reaches_the_record(migrated: Migrated) -> None:  # noqa: F811
    router = Router(migrated.config(rollout={"record_sample": 0.5}), migrated.dsn, source="serve")
    texts = migrated.queries()
    for i in range(80):
        router.search(texts[i % len(texts)], k=3, caller=f"s-{i}")
    router.close()
    seen, queries, _ = _rollup(migrated.dsn)["legacy"]
    assert seen == 80 and 20 <= queries <= 60  # Binomial(80, 0.5): sd 4.5
