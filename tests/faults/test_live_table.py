"""Scenarios 9-12: a table that is never quiet. Real PostgreSQL, real GGUF, the real coordinator and migrators
in-process (tests/support/runner.py); the Ray versions of the outages are in test_ray_outages.py.

9   completion while the application never stops writing; a writer that outpaces the swarm is reported;
10  a rollback that always finishes (while the index build runs), no leftovers from an ended migration, a kept
    column that stays honest, a table replaced under the swarm, drains fenced by a rollback, a lost commit
    acknowledgement;
11  the legacy column proved untouched row by row on a live table;
12  decommission while the application writes.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import psycopg
import pytest

from agents.migrator import DataMigrator
from swarm import migration as mig
from swarm.core.errors import MigrationError
from swarm.store.db import Database
from tests.faults.harness import create_docs, install_audit, tally, vector_writes, wait_for
from tests.support.runner import run_in_process
from tests.support.writer import AppWriter
from tests.test_router import Migrated, migrated, quality_root  # noqa: F401  (fixtures)

QUICK = {"validators": 0, "settle_seconds": 2.0, "follow_interval_s": 0.5}


def _status(conn: psycopg.Connection, mid: int) -> dict[str, Any]:
    return mig.status(conn, mig.load(conn, mid))


# ---------------------------------------------------------------------------------------------------------------
# 9. Completion under steady writes
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.chaos
def test_completes_while_the_application_never_stops_writing(
    make_config: Any, dsn: str, conn: psycopg.Connection, fresh_embedder: Any, record: Any
) -> None:
    out = record(
        "9a steady writes",
        "the application inserts, updates and deletes 25 changes/s, never pausing, from before the plan until "
        "5 s after the migration reports completed",
    )
    expected = create_docs(conn, "steady", 240, seed=51)
    cfg = make_config(database={"table": "steady"}, embedding={"batch_size": 8}, swarm={"shard_rows": 80, **QUICK})
    app = AppWriter(dsn, "steady", (1, 240), rate=25, until="never", linger=5.0, seed=52)
    run = run_in_process(cfg, dsn, during=app.run)
    expected.update(app.writes.changes)
    done = conn.execute(
        "SELECT extract(epoch FROM at) FROM swarm.events WHERE migration_id = %s AND kind = 'completed'",
        [run.migration.id],
    ).fetchone()
    after = sum(1 for _, t in vector_writes(conn, "steady") if done and t > float(done[0]))
    ids = tally(out, conn, mig.load(conn, run.migration.id), fresh_embedder, expected)
    st = _status(conn, run.migration.id)
    rate = app.writes.total / app.writes.seconds
    out.outcome = (
        f"{run.result['state']}; {app.writes.total} changes at {rate:.1f}/s; {after} vectors written after "
        f"'completed' (following); lag now {st['follow_lag']['queued']} queued"
    )
    assert run.result["state"] == "completed", run.result
    assert rate >= 20, f"the writer managed {rate:.1f} changes/s"
    assert after > 0, "the application wrote after completion and the swarm followed"
    assert out.rows_lost == 0, ids["lost"]
    assert out.rows_stale == 0, ids["stale"]
    assert st["follow_lag"]["queued"] == 0 and "oldest_seconds" in st["follow_lag"]


@pytest.mark.chaos
def test_a_writer_that_outpaces_the_swarm_is_reported_not_looped_on(
    make_config: Any, dsn: str, conn: psycopg.Connection, fresh_embedder: Any, record: Any
) -> None:
    out = record(
        "9b writer outpaces the swarm",
        "30 changes/s against a swarm held to 8 rows/s; the writer stops once status says it is falling behind",
    )
    expected = create_docs(conn, "outpaced", 40, seed=53)
    cfg = make_config(
        database={"table": "outpaced"},
        embedding={"batch_size": 4},
        swarm={"shard_rows": 20, "max_rows_per_second": 8, "settle_rows": 5, **QUICK},
    )
    app = AppWriter(dsn, "outpaced", (1, 40), rate=30, until="never", seed=54)
    seen: dict[str, Any] = {}

    def during(stop: threading.Event) -> None:
        writer_stop = threading.Event()
        t = threading.Thread(target=app.run, args=(writer_stop,), daemon=True)
        t.start()
        with psycopg.connect(dsn, autocommit=True) as c:
            deadline = time.monotonic() + 240
            while not stop.is_set() and time.monotonic() < deadline:
                r = (
                    c.execute(
                        "SELECT lag FROM swarm.migrations WHERE table_name = 'outpaced' ORDER BY id DESC LIMIT 1"
                    ).fetchone()
                    if c.execute("SELECT to_regclass('swarm.migrations')").fetchone()[0]
                    else None
                )
                if r and r[0] and r[0].get("falling_behind"):
                    seen.update(r[0])
                    seen["state"] = c.execute(
                        "SELECT state, phase FROM swarm.migrations WHERE table_name = 'outpaced' ORDER BY id DESC"
                    ).fetchone()
                    break
                time.sleep(0.5)
        writer_stop.set()
        t.join()

    run = run_in_process(cfg, dsn, during=during)
    expected.update(app.writes.changes)
    ids = tally(out, conn, mig.load(conn, run.migration.id), fresh_embedder, expected)
    out.outcome = (
        f"status said falling behind while {seen.get('state')}: {seen.get('queued')} queued, needs "
        f"{seen.get('arrival_rows_per_second')} rows/s, embeds {seen.get('embed_rows_per_second')}; then "
        f"{run.result['state']}"
    )
    assert seen, "status never said the swarm was falling behind"
    assert seen["arrival_rows_per_second"] > seen["embed_rows_per_second"]
    assert seen["state"][0] == "running", "falling behind is reported while the migration goes on, not a failure"
    assert run.result["state"] == "completed", run.result
    assert out.rows_lost == 0, ids["lost"]
    assert out.rows_stale == 0, ids["stale"]


# ---------------------------------------------------------------------------------------------------------------
# 10. Ends that always finish and leave nothing behind
# ---------------------------------------------------------------------------------------------------------------
def _swarm_objects(conn: psycopg.Connection, table: str) -> dict[str, Any]:
    return {
        "triggers": [
            r[0]
            for r in conn.execute(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND NOT tgisinternal "
                "AND tgname LIKE 'swarm%%' ORDER BY 1",
                [table],
            ).fetchall()
        ],
        "invalid_indexes": conn.execute(
            "SELECT count(*) FROM pg_index WHERE indrelid = to_regclass(%s) AND NOT indisvalid", [table]
        ).fetchone()[0],
        "new_column": conn.execute(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = 'nomic_embedding' "
            "AND NOT attisdropped",
            [table],
        ).fetchone()[0],
    }


@pytest.mark.chaos
def test_rollback_while_the_index_builds_cancels_the_build_and_finishes(
    make_config: Any, dsn: str, conn: psycopg.Connection, record: Any
) -> None:
    out = record(
        "10a rollback during the index build",
        "an old snapshot holds CREATE INDEX CONCURRENTLY in its wait; `rollback` meanwhile",
    )
    create_docs(conn, "building", 40, seed=61)
    cfg = make_config(database={"table": "building"}, swarm={"shard_rows": 20, **QUICK})
    holder = psycopg.connect(dsn, application_name="old-snapshot")
    holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    holder.execute("SELECT 1").fetchone()  # a snapshot, no lock on the table: the build waits for it to end
    got: dict[str, Any] = {}

    def during(stop: threading.Event) -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            wait_for(
                lambda: c.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE application_name LIKE 'swarm:index:%%' AND state = 'active'"
                ).fetchone(),
                180,
                "the index build to start",
            )
            m = mig.latest(c, cfg)
            assert m is not None
            db = Database(dsn)
            try:
                got.update(mig.rollback(db, m, cfg, reason="operator rollback during the index build"))
            finally:
                db.close()

    try:
        run = run_in_process(cfg, dsn, during=during)
    finally:
        holder.rollback()
        holder.close()
    left = _swarm_objects(conn, "building")
    st = _status(conn, run.migration.id)
    out.rows_total = conn.execute("SELECT count(*) FROM building").fetchone()[0]
    out.outcome = (
        f"{st['state']}; builds cancelled {got.get('index_builds_cancelled')}; left: {left}; legacy intact "
        f"{got.get('legacy_intact')}"
    )
    assert got.get("index_builds_cancelled", 0) >= 1, got
    assert st["state"] == "rolled_back"
    assert left == {"triggers": [], "invalid_indexes": 0, "new_column": 0}
    assert got["legacy_intact"] is True


@pytest.mark.chaos
def test_a_new_plan_removes_what_an_ended_migration_left_behind(
    make_config: Any, dsn: str, conn: psycopg.Connection, fresh_embedder: Any, record: Any
) -> None:
    """What an older swarm did on failure: the migration recorded ``failed``, its sync trigger left on the
    table. A later plan's trigger then saw the column already nulled by the dead one and queued nothing."""
    out = record(
        "10b leftovers of a failed migration",
        "a migration ended 'failed' with its sync trigger left on the table; a new one under live writes",
    )
    expected = create_docs(conn, "leftover", 120, seed=62)
    cfg = make_config(database={"table": "leftover"}, embedding={"batch_size": 8}, swarm={"shard_rows": 40, **QUICK})
    from swarm.commands import preflight

    db = Database(dsn)
    info, table, server = preflight(cfg, db)
    dead = mig.plan(
        db, cfg, name="dead", model_id="m", model_sha256=info.sha256, dimension=384, server=server, table=table
    )
    conn.execute("UPDATE swarm.migrations SET state = 'failed', reason = 'died' WHERE id = %s", [dead.id])
    db.close()
    app = AppWriter(dsn, "leftover", (1, 120), rate=20, until="never", linger=2.0, seed=63)
    run = run_in_process(cfg, dsn, during=app.run)
    expected.update(app.writes.changes)
    removed = conn.execute(
        "SELECT detail -> 'removed_sync_triggers' FROM swarm.events WHERE migration_id = %s AND kind = 'planned'",
        [run.migration.id],
    ).fetchone()[0]
    ids = tally(out, conn, mig.load(conn, run.migration.id), fresh_embedder, expected)
    left = _swarm_objects(conn, "leftover")
    out.outcome = f"{run.result['state']}; the plan removed sync triggers {removed}; triggers now {left['triggers']}"
    assert removed == [dead.id]
    assert left["triggers"] == [f"swarm_sync_{run.migration.id}"]
    assert out.rows_lost == 0, ids["lost"]
    assert out.rows_stale == 0, ids["stale"]


@pytest.mark.chaos
def test_a_kept_column_stays_honest_until_the_next_migration(
    make_config: Any, dsn: str, conn: psycopg.Connection, fresh_embedder: Any, record: Any
) -> None:
    out = record(
        "10c rollback --keep-data, then orchestrate",
        "after `rollback --keep-data` the application changes 10 rows and inserts 5; a new migration",
    )
    expected = create_docs(conn, "kept", 60, seed=64)
    cfg = make_config(database={"table": "kept"}, swarm={"shard_rows": 30, **QUICK})
    first = run_in_process(cfg, dsn)
    db = Database(dsn)
    mig.rollback(db, mig.load(conn, first.migration.id), cfg, reason="operator", keep_data=True)
    db.close()
    for i in range(1, 11):
        expected[str(i)] = f"def changed_{i}(): return {i}  # while nothing followed the table"
        conn.execute("UPDATE kept SET content = %s WHERE id = %s", [expected[str(i)], i])
    for i in range(1001, 1006):
        expected[str(i)] = f"def inserted_{i}(): pass"
        conn.execute("INSERT INTO kept (id, content) VALUES (%s, %s)", [i, expected[str(i)]])
    second = run_in_process(cfg, dsn)
    adopted = conn.execute(
        "SELECT detail -> 'adopted_guards' FROM swarm.events WHERE migration_id = %s AND kind = 'planned'",
        [second.migration.id],
    ).fetchone()[0]
    embedded = conn.execute(
        "SELECT coalesce(sum(rows), 0) FROM swarm.batches WHERE migration_id = %s", [second.migration.id]
    ).fetchone()[0]
    ids = tally(out, conn, mig.load(conn, second.migration.id), fresh_embedder, expected)
    out.outcome = f"the new plan adopted guards {adopted}; it embedded {embedded} rows (the 15 changed)"
    assert adopted == [first.migration.id]
    assert embedded == 15, "only the rows changed while nothing followed the table were embedded again"
    assert out.rows_lost == 0, ids["lost"]
    assert out.rows_stale == 0, ids["stale"]
    # A column of unknown provenance (no guard kept it) is refused with one clear line.
    conn.execute("ALTER TABLE kept ADD COLUMN other vector(384)")
    conn.execute("UPDATE kept SET other = nomic_embedding")
    with pytest.raises(MigrationError, match="already holds vectors that no swarm guard kept current"):
        run_in_process(make_config(database={"table": "kept", "new_column": "other"}, swarm=QUICK), dsn)


@pytest.mark.chaos
def test_a_table_replaced_under_the_swarm_fails_with_its_reason(
    make_config: Any, dsn: str, conn: psycopg.Connection, fresh_embedder: Any, record: Any
) -> None:
    out = record(
        "10d table replaced",
        "after completion the table is dropped and recreated from a backup (the seed's data rollback); the "
        "completed migration is run again",
    )
    expected = create_docs(conn, "restored", 40, seed=65)
    cfg = make_config(database={"table": "restored"}, swarm={"shard_rows": 20, **QUICK})
    first = run_in_process(cfg, dsn)
    conn.execute("CREATE TABLE backup AS SELECT id, content, embedding FROM restored")
    conn.execute("DROP TABLE restored")
    conn.execute("ALTER TABLE backup RENAME TO restored")
    conn.execute("ALTER TABLE restored ADD PRIMARY KEY (id)")
    install_audit(conn, "restored")
    conn.execute("DELETE FROM public.chaos_audit WHERE tbl = 'public.restored'")  # a new table: its own count
    import asyncio

    from agents.coordinator import Coordinator

    async def no_workers(*args: Any) -> Any:
        raise AssertionError("no worker is needed to find that the table was replaced")

    coord = Coordinator(cfg.to_payload(dsn), call=no_workers)
    again = asyncio.run(coord.run(first.migration.id))
    coord.db.close()
    st = _status(conn, first.migration.id)
    second = run_in_process(cfg, dsn)
    ids = tally(out, conn, mig.load(conn, second.migration.id), fresh_embedder, expected)
    out.outcome = f"the old migration: {st['state']} ({st['reason']}); a new one {second.result['state']}"
    assert again["state"] == "failed" and st["state"] == "failed"
    assert "was replaced since the plan" in st["reason"]
    assert second.result["state"] == "completed"
    assert out.rows_lost == 0, ids["lost"]
    assert out.rows_stale == 0, ids["stale"]


@pytest.mark.chaos
def test_drains_are_fenced_by_a_rollback(make_config: Any, dsn: str, conn: psycopg.Connection, record: Any) -> None:
    out = record(
        "10e drain fenced by rollback",
        "a drain waits on a row lock while `rollback --keep-data` starts; a drain after the rollback",
    )
    create_docs(conn, "fenced", 16, seed=66)
    cfg = make_config(database={"table": "fenced"}, swarm={"shard_rows": 16, **QUICK})
    run = run_in_process(cfg, dsn)
    m = run.migration
    worker = DataMigrator("data-migrator-x", cfg.to_payload(dsn), n_threads=1)
    conn.execute("UPDATE fenced SET content = 'def one(): return 1' WHERE id = 3")
    holder = psycopg.connect(dsn)
    holder.execute("SELECT 1 FROM fenced WHERE id = 3 FOR UPDATE")
    drained: list[int] = []
    t = threading.Thread(target=lambda: drained.append(worker.drain_changes(m.id)))
    t.start()
    wait_for(
        lambda: conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = 'swarm:data-migrator-x:w' "
            "AND wait_event_type = 'Lock'"
        ).fetchone(),
        60,
        "the drain to wait on the row",
    )
    result: dict[str, Any] = {}
    db = Database(dsn)
    rb = threading.Thread(target=lambda: result.update(mig.rollback(db, m, cfg, reason="op", keep_data=True)))
    rb.start()
    time.sleep(0.5)  # the rollback's fence now waits for the drain's share lock on the migration row
    holder.rollback()
    holder.close()
    t.join(60)
    rb.join(120)
    fenced_at = conn.execute(
        "SELECT extract(epoch FROM max(at)) FROM swarm.events WHERE migration_id = %s AND kind = 'rollback'", [m.id]
    ).fetchone()[0]
    conn.execute("UPDATE fenced SET content = 'def two(): return 2' WHERE id = 4")  # the guard nulls it
    conn.execute("INSERT INTO swarm.changes (migration_id, row_id) VALUES (%s, '4')", [m.id])
    late = worker.drain_changes(m.id)
    worker.close()
    db.close()
    writes_after = [r for r, at in vector_writes(conn, "fenced") if at > float(fenced_at)]
    row4 = conn.execute("SELECT nomic_embedding IS NULL FROM fenced WHERE id = 4").fetchone()[0]
    out.rows_total = 16
    out.outcome = (
        f"the waiting drain finished first ({drained}); after the rollback: drain {late}, writes {writes_after}"
    )
    assert result.get("legacy_intact") is True
    assert late == 0 and row4 and writes_after == []


@pytest.mark.chaos
def test_a_lost_commit_acknowledgement_never_counts_a_batch_twice(
    make_config: Any, dsn: str, conn: psycopg.Connection, record: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test double: the server's acknowledgement of a commit is lost (the connection breaks right after the
    COMMIT went through). No real part can be made to lose exactly that on cue, so ``Database.run`` raises
    ``OperationalError`` after the first committed batch, as psycopg would; its retry runs the batch again."""
    out = record("10f lost commit acknowledgement", "the first batch's COMMIT succeeds, its acknowledgement is lost")
    create_docs(conn, "acked", 48, seed=67)
    cfg = make_config(
        database={"table": "acked"}, embedding={"batch_size": 8}, swarm={"shard_rows": 48, "migrators": 1, **QUICK}
    )
    real = Database.run
    lost: list[bool] = []

    def run_losing_one_ack(self: Database, fn: Any, *, what: str = "query") -> Any:
        if what != "write_batch" or lost:
            return real(self, fn, what=what)

        def commit_then_lose(c: psycopg.Connection) -> Any:
            got = fn(c)
            if not lost:
                lost.append(True)
                raise psycopg.OperationalError("server closed the connection unexpectedly (the test lost the ack)")
            return got

        return real(self, commit_then_lose, what=what)

    monkeypatch.setattr(Database, "run", run_losing_one_ack)
    run = run_in_process(cfg, dsn, migrators=1)
    monkeypatch.setattr(Database, "run", real)
    done = conn.execute("SELECT rows_done FROM swarm.shards WHERE migration_id = %s", [run.migration.id]).fetchone()[0]
    batches = conn.execute(
        "SELECT count(*), sum(rows) FROM swarm.batches WHERE migration_id = %s AND shard_id = 0", [run.migration.id]
    ).fetchone()
    out.rows_total = out.rows_embedded = 48
    out.outcome = f"ack lost {len(lost)}x; shard rows_done {done}; {batches[0]} batch records of {batches[1]} rows"
    assert lost and run.result["state"] == "completed"
    assert done == 48 and batches == (6, 48)


# ---------------------------------------------------------------------------------------------------------------
# 11. The legacy column, proved untouched on a live table
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.chaos
def test_the_legacy_column_is_proved_untouched_row_by_row(
    make_config: Any, dsn: str, conn: psycopg.Connection, record: Any
) -> None:
    out = record(
        "11 legacy check on a live table",
        "the application rewrites 5 rows (content and legacy vector) and deletes 2 during the migration",
    )
    create_docs(conn, "proved", 60, seed=68)
    cfg = make_config(database={"table": "proved"}, swarm={"shard_rows": 30, **QUICK})
    other = np.full(384, -1 / np.sqrt(384), dtype=np.float32)

    def app(stop: threading.Event) -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            from pgvector.psycopg import register_vector

            register_vector(c)
            wait_for(lambda: c.execute("SELECT to_regclass('swarm.baseline_1')").fetchone()[0], 120, "the plan")
            for i in range(1, 6):
                c.execute("UPDATE proved SET content = content || ' # v2', embedding = %s WHERE id = %s", [other, i])
            c.execute("DELETE FROM proved WHERE id IN (59, 60)")

    run = run_in_process(cfg, dsn, during=app)
    st = _status(conn, run.migration.id)
    check = st["legacy_check"]
    out.rows_total = 58
    out.outcome = f"{st['state']}; legacy check: {check}"
    assert check["legacy_intact"] is True
    assert check["rows_changed_by_application"] == 5 and check["rows_deleted"] == 2
    assert check["legacy_rows_unchanged"] == 53
    # And it sees a write to the legacy column that no content change explains.
    conn.execute("UPDATE proved SET embedding = %s WHERE id = 20", [other])
    later = mig.verify_legacy(conn, mig.load(conn, run.migration.id))
    assert later["legacy_intact"] is False and later["legacy_changed_without_content_change"] == 1


# ---------------------------------------------------------------------------------------------------------------
# 12. Decommission while the application writes
# ---------------------------------------------------------------------------------------------------------------
class _Traffic:
    """The application during the decommission: reads, content updates and legacy writes every ~20 ms, timed."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.latencies: list[float] = []
        self.stop = threading.Event()
        self.writes = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True, application_name="app") as c:
            n = 0
            while not self.stop.is_set():
                n += 1
                rid = 1 + n % 50
                for q, args in (
                    ("SELECT content FROM documents WHERE id = %s", [rid]),
                    # The legacy column is written too (until it is gone, then the column of that name).
                    (
                        "UPDATE documents SET content = content || %s, embedding = embedding WHERE id = %s",
                        [f" # {n}", rid],
                    ),
                ):
                    t0 = time.monotonic()
                    try:
                        c.execute(q, args)
                    except psycopg.errors.UndefinedColumn:
                        pass
                    self.latencies.append(time.monotonic() - t0)
                self.writes += 1
                time.sleep(0.02)


@pytest.mark.chaos
def test_decommission_while_the_application_writes(migrated: Any, record: Any, fresh_embedder: Any) -> None:  # noqa: F811
    from swarm.ops.decommission import decommission
    from swarm.serving.rollout import set_percent

    out = record(
        "12 decommission under writes",
        "the application reads and rewrites rows every 20 ms through the archive, the drop and the rename",
    )
    cfg = migrated.config(swarm={"lock_timeout_ms": 500})
    db = migrated.db()
    set_percent(db, migrated.migration(), 100, reason="test")
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        install_audit(c, "documents")
        c.execute("CREATE VIEW legacy_view AS SELECT id, embedding FROM documents")
    with pytest.raises(MigrationError, match="used by view legacy_view"):
        decommission(cfg, migrated.dsn, report=False)
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        c.execute("DROP VIEW legacy_view")
        rows = c.execute("SELECT count(*) FROM documents").fetchone()[0]
    app = _Traffic(migrated.dsn)
    app.thread.start()
    try:
        d = decommission(cfg, migrated.dsn, rename=True, report=False)
    finally:
        app.stop.set()
        app.thread.join()
    # The follow mode goes on after the legacy column is gone: a catch-up pass embeds what changed meanwhile.
    from agents.coordinator import Coordinator

    payload = cfg.to_payload(migrated.dsn)
    worker = DataMigrator("data-migrator-0", payload, n_threads=1)
    import asyncio

    async def call(name: str, method: str, *args: Any) -> Any:
        return await asyncio.to_thread(getattr(worker, method), *args)

    coord = Coordinator(payload, call=call)
    coord.register("data-migrator-0", "data-migrator")
    again = asyncio.run(coord.run(migrated.mid))
    worker.close()
    coord.db.close()
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        m = mig.load(c, migrated.mid)
        ids = tally(out, c, m, fresh_embedder)
        vec = fresh_embedder.embed_many(["split a string on commas"])[0][0]
        from pgvector.psycopg import register_vector

        register_vector(c)
        hits = c.execute("SELECT id FROM documents ORDER BY embedding <=> %s LIMIT 5", [vec]).fetchall()
        columns = [
            r[0]
            for r in c.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'documents'::regclass AND attnum > 0 "
                "AND NOT attisdropped"
            ).fetchall()
        ]
    worst = max(app.latencies)
    out.outcome = (
        f"archived {d['archived_rows']}/{rows} rows in {d['archive_batches']} batches; DDL {d['ddl_attempts']} "
        f"attempt(s); slowest app query {worst * 1000:.0f} ms over {len(app.latencies)}; renamed: the app's own "
        f"`ORDER BY embedding <=>` returns {len(hits)}; catch-up {again['state']}"
    )
    assert d["archived_rows"] == rows
    assert worst < 0.5 + 1.0, f"an application query waited {worst:.2f} s"
    assert m.target.new_column == "embedding" and "nomic_embedding" not in columns
    assert len(hits) == 5
    assert again["state"] == "completed"
    assert out.rows_lost == 0, ids["lost"]
    assert out.rows_stale == 0, ids["stale"]
