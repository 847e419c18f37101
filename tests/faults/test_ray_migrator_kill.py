"""Scenario 1: SIGKILL a data-migrator in the middle of a batch, twice in one run (real Ray, named detached
actors, the real GGUF).

The first kill lands inside a write transaction: a row of the batch is locked by the test, so the migrator has
staged its vectors and waits in its ``UPDATE``; it dies there. The second lands while a migrator embeds a batch.
Ray restarts each one; its shard goes back to pending and resumes from its checkpoint; nothing is lost, stale or
written twice.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import psycopg
import pytest

from swarm import commands
from swarm import migration as mig
from tests.faults.harness import actor_pid, blocked_writers, create_docs, status_when, tally, wait_for

ROWS = 400


@pytest.mark.chaos
@pytest.mark.slow
def test_sigkill_migrator_twice_mid_batch(fresh_swarm: Any, fresh_embedder: Any, record: Any) -> None:
    env = fresh_swarm
    out = record(
        "1 migrator SIGKILL x2",
        "SIGKILL a migrator waiting in its batch's UPDATE (row locked by the "
        "test); SIGKILL a migrator while it embeds a batch",
    )
    conn = psycopg.connect(env.plain_dsn, autocommit=True)
    create_docs(conn, "k_migrator", ROWS, seed=21)
    cfg = env.make("k_migrator")
    assert commands.orchestrate(cfg, detach=True, progress=False) == 0
    # Kill 1: lock a row ahead of shard 0's progress; its migrator stages a batch and waits in the UPDATE.
    holder = psycopg.connect(env.plain_dsn, application_name="test-row-lock")
    assert holder.execute("SELECT nomic_embedding IS NULL FROM k_migrator WHERE id = 88 FOR UPDATE").fetchone()[0]
    victim = wait_for(lambda: blocked_writers(conn), 240, "a migrator to block on the locked row")[0]
    st = commands.status(cfg)
    shard1 = next(sh["id"] for sh in st["shards"] if sh["state"] == "running" and sh["worker"] == victim)
    pid1 = actor_pid(victim)
    os.kill(pid1, signal.SIGKILL)
    time.sleep(0.5)
    holder.rollback()  # the dead migrator's backend finds its client gone and rolls back
    holder.close()

    # Kill 2: a migrator (another process than the first) in the middle of a shard, embedding.
    def embedding() -> tuple[str, int, int] | None:
        s = commands.status(cfg)
        for sh in s["shards"]:
            if sh["state"] == "running" and 0 < sh["rows_done"] < sh["rows_planned"] - 16 and sh["id"] != shard1:
                pid = actor_pid(sh["worker"])
                if pid != pid1:
                    return sh["worker"], int(sh["id"]), pid
        return None

    victim2, shard2, pid2 = wait_for(embedding, 240, "a second migrator mid-shard", poll=0.3)
    os.kill(pid2, signal.SIGKILL)
    final = status_when(cfg, lambda s: s["state"] in mig.TERMINAL, 420, "the migration to end")
    m = mig.load(conn, final["id"])
    ids = tally(out, conn, m, fresh_embedder)
    attempts = {sh["id"]: sh["attempts"] for sh in final["shards"]}
    leaks = env.check_leaks(conn)
    out.outcome = (
        f"{final['state']}; killed {victim} (shard {shard1}, attempts {attempts[shard1]}) and {victim2} "
        f"(shard {shard2}, attempts {attempts[shard2]}); status {final['rows_done']}/{final['rows_total']}"
    )
    conn.close()
    assert final["state"] == "completed", final["reason"]
    assert attempts[shard1] > 1 and attempts[shard2] > 1, attempts
    assert out.rows_lost == 0, ids["lost"]
    assert out.rows_stale == 0, ids["stale"]
    assert out.rows_twice == 0, f"written twice: {ids['twice']}"
    assert final["rows_done"] == final["rows_total"] == ROWS
    assert not leaks, leaks
