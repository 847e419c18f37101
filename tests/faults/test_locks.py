"""Scenario 8: locks. A long transaction holds a lock on the table while the migration's schema change (ADD COLUMN
and the sync trigger, ACCESS EXCLUSIVE) wants it. The change waits at most ``lock_timeout`` per attempt and
retries; the application's queries, which queue behind a waiting ACCESS EXCLUSIVE request, are never held up
longer than that. When the retries run out, the migration stops with a clear error and leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agents.coordinator import Coordinator
from agents.migrator import DataMigrator
from swarm import migration as mig
from swarm.core.errors import MigrationError
from tests.faults.harness import create_docs, snapshot, tally
from tests.support.runner import run_in_process

LOCK_TIMEOUT_MS = 500
HOLD_SECONDS = 4.0


class AppTraffic:
    """The application: a read and a content update every ~20 ms, each timed, from its own connection."""

    def __init__(self, dsn: str, table: str, rows: int) -> None:
        self.dsn, self.table, self.rows = dsn, table, rows
        self.column_added_at: float | None = None
        self.latencies: list[tuple[float, float, str]] = []  # (start, seconds, what)

    def run(self, stop: threading.Event) -> None:
        """Until ``stop`` is set (the migration has ended), or 1 s after the new column appeared."""
        with psycopg.connect(self.dsn, autocommit=True, application_name="app") as c:
            n = 0
            while not stop.is_set():
                n += 1
                rid = 2 + n % (self.rows - 1)
                for what, q, args in (
                    ("select", f"SELECT content FROM {self.table} WHERE id = %s", [rid]),
                    (
                        "update",
                        f"UPDATE {self.table} SET content = %s WHERE id = %s",
                        [f"def g{rid}_{n}(): return {n}  # edited by the app", rid],
                    ),
                ):
                    t0 = time.monotonic()
                    c.execute(q, args)
                    self.latencies.append((t0, time.monotonic() - t0, what))
                if (
                    n % 10 == 0
                    and self.column_added_at is None
                    and c.execute(
                        "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = 'nomic_embedding'",
                        [self.table],
                    ).fetchone()
                ):
                    self.column_added_at = time.monotonic()
                if self.column_added_at is not None and time.monotonic() - self.column_added_at > 1.0:
                    return  # the schema change is through: what this scenario measures is over
                time.sleep(0.02)

    def worst(self, since: float = 0.0) -> tuple[float, str]:
        got = [(s, w) for t0, s, w in self.latencies if t0 >= since]
        return max(got) if got else (0.0, "-")


@pytest.mark.chaos
def test_schema_change_waits_at_most_lock_timeout_and_retries(
    make_config: Any, dsn: str, conn: psycopg.Connection, fresh_embedder: Any, record: Any
) -> None:
    out = record(
        "8 locks: long transaction",
        f"a transaction holds ACCESS SHARE for {HOLD_SECONDS:.0f} s during "
        f"the ADD COLUMN; app reads + updates every 20 ms; "
        f"lock_timeout {LOCK_TIMEOUT_MS} ms",
    )
    create_docs(conn, "locked", 60, seed=8)
    cfg = make_config(
        database={"table": "locked"},
        embedding={"batch_size": 8},
        swarm={"shard_rows": 30, "validators": 0, "lock_timeout_ms": LOCK_TIMEOUT_MS, "ddl_retries": 30},
    )
    app = AppTraffic(dsn, "locked", 60)
    holder = psycopg.connect(dsn, application_name="long-transaction")
    holder.execute("SELECT count(*) FROM locked").fetchone()  # the transaction stays open: ACCESS SHARE held
    t_hold = time.monotonic()

    released = threading.Timer(HOLD_SECONDS, holder.commit)
    released.start()
    try:
        # The application runs from before the plan (its queries queue behind the waiting ALTER) and may go on
        # writing after the migration reports completed: the runner then lets the coordinator follow the table
        # until the queue is empty, as the product does, before the rows are counted.
        run = run_in_process(cfg, dsn, during=app.run)
        m, result = run.migration, run.result
    finally:
        released.cancel()
        holder.close()
    attempts = conn.execute(
        "SELECT (detail->>'ddl_attempts')::int FROM swarm.events WHERE migration_id = %s AND kind = 'planned'", [m.id]
    ).fetchone()[0]
    worst, what = app.worst(since=t_hold)
    ids = tally(out, conn, mig.load(conn, m.id), fresh_embedder)
    out.outcome = (
        f"{result['state']}; ADD COLUMN took {attempts} attempts; slowest app query while it waited "
        f"{worst * 1000:.0f} ms ({what}), {len(app.latencies)} app queries"
    )
    assert result["state"] == "completed", result
    assert attempts > 1, "the long transaction should have made the first attempts time out"
    # Without lock_timeout the app's queries would wait behind the ALTER for the whole HOLD_SECONDS.
    assert worst < LOCK_TIMEOUT_MS / 1000 + 1.0, f"an app {what} waited {worst:.2f} s"
    assert out.rows_lost == 0, ids["lost"]
    assert out.rows_stale == 0, ids["stale"]


@pytest.mark.chaos
def test_schema_change_gives_up_cleanly(
    make_config: Any, dsn: str, conn: psycopg.Connection, record: Any, minilm_q8: Path
) -> None:
    """Retries exhausted: a clear error, no column, no trigger, and no half-made migration that the next
    ``orchestrate`` would pick up and resume (it resumes any migration of the table not in a terminal state)."""
    out = record(
        "8 locks: retries run out", "a transaction holds ACCESS SHARE throughout; lock_timeout 200 ms, ddl_retries 2"
    )
    create_docs(conn, "held", 30, seed=9)
    cfg = make_config(
        database={"table": "held"}, swarm={"shard_rows": 30, "validators": 0, "lock_timeout_ms": 200, "ddl_retries": 2}
    )
    holder = psycopg.connect(dsn, application_name="long-transaction")
    holder.execute("SELECT count(*) FROM held").fetchone()
    before = snapshot(conn, "held")
    try:
        with pytest.raises(MigrationError) as e:
            run_in_process(cfg, dsn)
    finally:
        holder.close()
    after = snapshot(conn, "held")
    out.rows_total = before["rows"][0]
    out.rows_lost = 0 if after["rows"] == before["rows"] else out.rows_total
    table_unchanged = [c for c in after["columns"] if c[1] == "held"] == [
        c for c in before["columns"] if c[1] == "held"
    ] and [t for t in after["triggers"] if t[0] == "held"] == [t for t in before["triggers"] if t[0] == "held"]
    left = mig.latest(conn, cfg)
    # What the next `orchestrate` does with it (commands.orchestrate: resume unless terminal), in-process.
    rerun = "plans a new migration"
    if left is not None and left.state not in mig.TERMINAL:
        payload = cfg.to_payload(dsn)
        worker = DataMigrator("data-migrator-0", payload, n_threads=1)

        async def call(name: str, method: str, *args: Any) -> Any:
            return await asyncio.to_thread(getattr(worker, method), *args)

        coord = Coordinator(payload, call=call)
        coord.register("data-migrator-0", "data-migrator")
        res = asyncio.run(coord.run(left.id))
        rerun = f"resumes #{left.id}: {res['state']} ({str(res.get('reason', ''))[:70]})"
    out.outcome = (
        f"MigrationError: {str(e.value)[:60]}...; table {'unchanged' if table_unchanged else 'CHANGED'}; "
        f"left {left.state if left else 'no'} migration; next orchestrate {rerun}"
    )
    assert "could not lock the table within 200 ms after 3 attempts" in str(e.value)
    assert table_unchanged, "no column, no trigger after a refused schema change"
    assert left is None or left.state in mig.TERMINAL, (
        f"migration {left.id if left else '?'} is left '{left.state if left else '?'}' with no column and no "
        f"shards; the next orchestrate {rerun}"
    )
