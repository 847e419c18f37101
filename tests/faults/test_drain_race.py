"""Scenario 4c: two migrators drain the change queue at once and meet on one row.

A row the application changes twice gets two queue entries; the coordinator also re-queues every row still
without a vector (``Coordinator._drain``), so the same row can sit in the queue several times. Migrators claim
entries with ``FOR UPDATE SKIP LOCKED``: two of them can each claim one entry of the same row, both read the row
(still without a vector), both embed it, and both write it. Made deterministic here: the test holds the row's
lock until both migrators wait in their ``UPDATE``.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from swarm import migration as mig
from tests.faults.harness import blocked_writers, create_docs, tally, wait_for
from tests.support.runner import run_in_process


@pytest.mark.chaos
def test_concurrent_drains_write_a_row_once(
    make_config: Any, dsn: str, conn: psycopg.Connection, fresh_embedder: Any, record: Any
) -> None:
    out = record(
        "4c drain race",
        "the app updates a row twice (2 queue entries); 2 migrators drain one entry "
        "each at once; the row is locked until both wait to write it",
    )
    create_docs(conn, "race", 8, seed=43)
    cfg = make_config(database={"table": "race"}, swarm={"shard_rows": 8, "validators": 0})
    run = run_in_process(cfg, dsn)
    m, result, workers = run.migration, run.result, run.workers
    assert result["state"] == "completed", result
    conn.execute("UPDATE race SET content = 'def first(): return 1' WHERE id = 3")
    conn.execute("UPDATE race SET content = 'def second(): return 2' WHERE id = 3")
    queued = conn.execute(
        "SELECT count(*) FROM swarm.changes WHERE migration_id = %s AND row_id = '3'", [m.id]
    ).fetchone()[0]
    holder = psycopg.connect(dsn)
    holder.execute("SELECT 1 FROM race WHERE id = 3 FOR UPDATE")
    done: dict[str, Any] = {}
    threads = [
        threading.Thread(target=lambda n=n, w=w: done.__setitem__(n, w.drain_changes(m.id, 1)))
        for n, w in workers.items()
    ]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(blocked_writers(conn)) == 2, 60, "both migrators to wait on the row", poll=0.05)
    finally:
        holder.rollback()
        holder.close()
        for t in threads:
            t.join(timeout=60)
    ids = tally(out, conn, mig.load(conn, m.id), fresh_embedder)
    writes = conn.execute(
        "SELECT count(*) FROM public.chaos_audit WHERE row_id = '3' AND content_md5 = md5(%s)",
        ["def second(): return 2"],
    ).fetchone()[0]
    out.outcome = (
        f"{queued} queue entries for the row; drains returned {sorted(done.values())}; "
        f"the row's final content was written {writes} times"
    )
    assert out.rows_lost == 0, ids["lost"]
    assert out.rows_stale == 0, ids["stale"]
    assert writes == 1, f"row 3 embedded and written {writes} times for the same content"
