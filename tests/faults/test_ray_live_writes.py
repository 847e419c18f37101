"""Scenario 4: the application writes during the migration, from another process, at a steady rate: inserts,
content updates, deletes (``tests/support/writer.py``). At the end every row holds what the application last
wrote, and every vector is of that content.

4a: the application writes from before the plan until the migration has drained the changes made during the
backfill and moves on to its index. 4b: it goes on after the migration's last drain (here, after "completed";
with validators, the validation and the rollout steps come after the last drain too).
"""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import pytest

from swarm import commands
from swarm import migration as mig
from tests.faults.harness import create_docs, start_writer, status_when, tally

ROWS = 400
RATE = 5.0


@pytest.mark.chaos
@pytest.mark.slow
def test_application_writes_during_the_migration(fresh_swarm: Any, fresh_embedder: Any, record: Any) -> None:
    env = fresh_swarm
    out = record(
        "4a live writes",
        f"another process inserts, updates content, deletes at {RATE:g} ops/s from "
        "before the plan through the backfill and the drain of changes",
    )
    conn = psycopg.connect(env.plain_dsn, autocommit=True)
    expected = create_docs(conn, "k_live", ROWS, seed=41)
    cfg = env.make("k_live")
    changes = env.root / "k_live.json"
    app = start_writer(env.plain_dsn, "k_live", changes, rows=ROWS, rate=RATE, until="index", seconds=900, seed=41)
    try:
        time.sleep(2)  # the application is already busy when the migration starts
        code = commands.orchestrate(cfg, progress=False)
        assert app.wait(timeout=60) == 0
    finally:
        if app.poll() is None:
            app.kill()
    done = json.loads(changes.read_text())
    expected.update(done["changes"])
    final = commands.status(cfg)
    ids = tally(out, conn, mig.load(conn, final["id"]), fresh_embedder, expected=expected)
    leaks = env.check_leaks(conn)
    c = done["counts"]
    out.outcome = (
        f"{final['state']} (exit {code}); app did {c['insert']} inserts, {c['update']} updates, "
        f"{c['delete']} deletes in {done['seconds']:.0f} s; status {final['rows_done']}/{final['rows_total']}"
    )
    conn.close()
    assert code == 0 and final["state"] == "completed", final["reason"]
    assert sum(c.values()) >= 50, c
    assert out.rows_lost == 0, ids["lost"]
    assert out.rows_stale == 0, ids["stale"]
    assert not leaks, leaks


@pytest.mark.chaos
@pytest.mark.slow
def test_rows_changed_after_completion_get_their_vectors(fresh_swarm: Any, fresh_embedder: Any, record: Any) -> None:
    """The sync trigger stays after completion: it nulls the vector of a row whose content changes and queues
    the row; the coordinator follows the table and embeds it within a few follow intervals."""
    env = fresh_swarm
    out = record(
        "4b writes after completion",
        f"the application goes on at {RATE:g} ops/s for 8 s after `orchestrate` returned; checked 30 s later",
    )
    conn = psycopg.connect(env.plain_dsn, autocommit=True)
    expected = create_docs(conn, "k_after", 120, seed=42)
    cfg = env.make("k_after")
    assert commands.orchestrate(cfg, progress=False) == 0
    changes = env.root / "k_after.json"
    app = start_writer(env.plain_dsn, "k_after", changes, rows=120, rate=RATE, until="never", seconds=8, seed=42)
    assert app.wait(timeout=60) == 0
    # The coordinator follows the table: the queue empties by itself within a few follow intervals.
    status_when(cfg, lambda s: s["pending_changes"] == 0, 120, "the follow mode to embed the changes")
    done = json.loads(changes.read_text())
    expected.update(done["changes"])
    final = commands.status(cfg)
    ids = tally(out, conn, mig.load(conn, final["id"]), fresh_embedder, expected=expected)
    c = done["counts"]
    out.outcome = (
        f"migration {final['state']}; app did {c['insert']} inserts, {c['update']} updates, "
        f"{c['delete']} deletes; {final['pending_changes']} changes still queued once the follow mode settled"
    )
    conn.close()
    assert out.rows_stale == 0, ids["stale"]
    assert out.rows_lost == 0, (
        f"{len(ids['lost'])} rows changed after completion have no vector once the queue is empty: {ids['lost'][:10]}"
    )
