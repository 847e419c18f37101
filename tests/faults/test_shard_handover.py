"""Scenario 2c: a shard handed out again while its first run still goes on *in the same migrator*.

That is what a coordinator restart does (scenario 2a): the restarted coordinator puts the shards left
``running`` back to pending (``requeue_running``) and claims them again (attempt + 1) for the migrators it finds
idle, which are the ones still running them (actor calls outlive their caller). The migrator then runs two
``run_shard`` calls at once (a threaded actor, ``max_concurrency=4``). The old run must be fenced and the new one
must commit its work.

To make the interleaving deterministic, ``write_vectors`` is wrapped to pause half a second after staging and
applying a batch, inside the write transaction (the real function runs; only the timing is forced). Everything
else is real: PostgreSQL, the GGUF, ``DataMigrator``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from agents.migrator import DataMigrator
from swarm import migration as mig
from swarm.commands import preflight
from swarm.migration import backfill as backfill_module
from swarm.store.db import Database
from tests.faults.harness import create_docs, tally, wait_for

ROWS = 48


@pytest.mark.chaos
def test_a_migrator_running_a_shard_twice_commits_once(
    make_config: Any,
    dsn: str,
    conn: psycopg.Connection,
    fresh_embedder: Any,
    record: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = record(
        "2c shard handed out twice to one migrator",
        "what a restarted coordinator does: requeue + claim (attempt 2) while the migrator still runs "
        "attempt 1 of the shard; batch writes paused 0.5 s to force the overlap",
    )
    create_docs(conn, "handover", ROWS, seed=24)
    cfg = make_config(
        database={"table": "handover"},
        embedding={"batch_size": 8},
        swarm={"shard_rows": ROWS, "migrators": 1, "validators": 0},
    )
    db = Database(dsn)
    info, table, server = preflight(cfg, db)
    m = mig.plan(
        db, cfg, name="handover", model_id="m", model_sha256=info.sha256, dimension=384, server=server, table=table
    )
    w = DataMigrator("data-migrator-0", cfg.to_payload(dsn), n_threads=1)
    real_write = backfill_module.write_vectors

    def slow_write(*args: Any, **kwargs: Any) -> int:
        n = real_write(*args, **kwargs)
        time.sleep(0.5)  # inside the batch's transaction, connection free for other threads
        return n

    monkeypatch.setattr(backfill_module, "write_vectors", slow_write)
    results: dict[int, Any] = {}

    def run(attempt: int) -> None:
        try:
            results[attempt] = w.run_shard(m.id, 0, attempt)
        except Exception as e:  # noqa: BLE001 (what escapes is the finding)
            results[attempt] = e

    assert mig.claim_shard(conn, m.id, "data-migrator-0") == (0, 1)
    t1 = threading.Thread(target=run, args=(1,), daemon=True)
    t1.start()
    wait_for(
        lambda: conn.execute("SELECT rows_done FROM swarm.shards WHERE migration_id = %s", [m.id]).fetchone()[0] >= 8,
        120,
        "the first run to commit a batch",
    )
    # The restarted coordinator: shards left running go back to pending, then are claimed again.
    assert mig.requeue_running(conn, m.id) == 1
    assert mig.claim_shard(conn, m.id, "data-migrator-0") == (0, 2)
    t2 = threading.Thread(target=run, args=(2,), daemon=True)
    t2.start()
    t1.join(timeout=180)
    t2.join(timeout=180)
    writer = conn.execute(
        "SELECT state, now() - xact_start FROM pg_stat_activity WHERE application_name = 'swarm:data-migrator-0:w'"
    ).fetchone()
    shard = conn.execute(
        "SELECT state, rows_done, attempt FROM swarm.shards WHERE migration_id = %s", [m.id]
    ).fetchone()
    ids = tally(out, conn, mig.load(conn, m.id), fresh_embedder)

    def show(r: Any) -> str:
        if isinstance(r, Exception):
            return f"raised {type(r).__name__}"
        return "fenced" if r and r.get("fenced") else f"done ({r['rows']} rows)" if r else "did not return"

    out.outcome = (
        f"attempt 1 {show(results.get(1))}, attempt 2 {show(results.get(2))}; shard {shard[0]}, "
        f"{shard[1]} rows checkpointed; the migrator's write connection is "
        f"{writer[0] if writer else 'closed'}" + (f" for {writer[1]}" if writer and writer[1] else "")
    )
    assert not isinstance(results.get(1), Exception) and not isinstance(results.get(2), Exception), results
    assert results[1]["fenced"] and not results[2]["fenced"], results
    assert writer is None or writer[0] == "idle", f"write connection left {writer[0]}: its work never commits"
    assert shard[0] == "done"
    assert out.rows_lost == 0, f"{len(ids['lost'])} rows without a committed vector"
    assert out.rows_stale == 0, ids["stale"]
