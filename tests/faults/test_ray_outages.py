"""Scenarios 9 and 10 on the real Ray swarm: steady writes through completion, and outages that pause a migration
without throwing any of its work away.

9c   another process writes >= 20 changes/s from before `orchestrate` until after it reports completed;
10g  every migrator killed for good; the migration pauses after `swarm.worker_timeout_s` and resumes by itself
     when migrators are spawned again;
10h  the database unreachable for longer than `swarm.db_retry_s`; the coordinator waits and goes on;
10i  the coordinator SIGKILLed while nothing watches (`orchestrate --detach`); Ray restarts it and it resumes.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from swarm import commands
from swarm import migration as mig
from swarm.store.embedded import pg_ctl_embedded
from tests.faults.harness import actor_pid, create_docs, start_writer, status_when, tally, wait_for

ROWS = 300


def _finish(env: Any, cfg: Any, out: Any, embedder: Any, expected: Any = None) -> tuple[dict[str, Any], Any]:
    final = status_when(
        cfg, lambda s: s["state"] in mig.TERMINAL and s["pending_changes"] == 0, 600, "the migration to settle"
    )
    with psycopg.connect(env.plain_dsn, autocommit=True) as conn:
        ids = tally(out, conn, mig.load(conn, final["id"]), embedder, expected)
        leaks = env.check_leaks(conn)
    assert not leaks, leaks
    return final, ids


@pytest.mark.chaos
@pytest.mark.slow
def test_steady_writes_through_completion_on_the_swarm(fresh_swarm: Any, fresh_embedder: Any, record: Any) -> None:
    env = fresh_swarm
    out = record(
        "9c steady writes, Ray",
        "another process writes 22 changes/s, never pausing, from before `orchestrate` until 8 s after it "
        "reported completed",
    )
    with psycopg.connect(env.plain_dsn, autocommit=True) as conn:
        expected = create_docs(conn, "k_steady", ROWS, seed=71)
    cfg = env.make("k_steady", swarm={"max_rows_per_second": 0, "follow_interval_s": 1.0, "settle_seconds": 3.0})
    changes = env.root / "k_steady.json"
    app = start_writer(env.plain_dsn, "k_steady", changes, rows=ROWS, rate=22, until="never", seconds=1200, seed=71)
    try:
        time.sleep(2)  # the application is already busy when the migration starts
        code = commands.orchestrate(cfg, progress=False)
        done_at = time.monotonic()
        wait_for(lambda: time.monotonic() - done_at > 8 or app.poll() is not None, 30, "8 s of writes after completion")
        assert app.poll() is None, "the application stopped by itself"
    finally:
        app.send_signal(signal.SIGTERM)
        app.wait(timeout=60)
    done = json.loads(changes.read_text())
    expected.update(done["changes"])
    final, ids = _finish(env, cfg, out, fresh_embedder, expected)
    rate = sum(done["counts"].values()) / done["seconds"]
    out.outcome = f"{final['state']} (exit {code}); {sum(done['counts'].values())} changes at {rate:.1f}/s"
    assert code == 0 and final["state"] == "completed", final["reason"]
    assert rate >= 20, rate
    assert out.rows_lost == 0, ids["lost"]
    assert out.rows_stale == 0, ids["stale"]


@pytest.mark.chaos
@pytest.mark.slow
def test_every_migrator_gone_pauses_then_resumes_when_they_are_back(
    fresh_swarm: Any, fresh_embedder: Any, record: Any
) -> None:
    import ray

    from agents import runtime

    env = fresh_swarm
    out = record(
        "10g all migrators killed",
        "every data-migrator killed for good mid-backfill (no restart); 2 spawned again after the pause",
    )
    with psycopg.connect(env.plain_dsn, autocommit=True) as conn:
        create_docs(conn, "k_gone", ROWS, seed=72)
    cfg = env.make("k_gone", swarm={"worker_timeout_s": 8.0, "resume_poll_s": 1.0})
    assert commands.orchestrate(cfg, detach=True, progress=False) == 0
    status_when(cfg, lambda s: s["state"] == "running" and s["rows_done"] >= 40, 300, "the backfill under way")
    for name in runtime.list_agents("data-migrator-"):
        ray.kill(runtime.get_actor(name), no_restart=True)
    paused = status_when(cfg, lambda s: s["state"] == "paused", 120, "the migration to pause")
    kept = paused["rows_done"]
    commands.spawn(cfg, "data-migrator", 2)
    final, ids = _finish(env, cfg, out, fresh_embedder)
    out.outcome = (
        f"paused ({paused['reason'][:60]}...) with {kept} rows kept; after `spawn` {final['state']} "
        f"{final['rows_done']}/{final['rows_total']}"
    )
    assert "no data-migrator answered" in paused["reason"]
    assert final["state"] == "completed" and final["rows_done"] == final["rows_total"] == ROWS
    assert out.rows_lost == 0, ids["lost"]
    assert out.rows_stale == 0, ids["stale"]
    assert out.rows_twice == 0, ids["twice"]


@pytest.mark.chaos
@pytest.mark.slow
def test_a_database_outage_longer_than_the_retries_pauses_and_resumes(
    fresh_swarm: Any, fresh_embedder: Any, record: Any, skip_if_external_server: None
) -> None:
    env = fresh_swarm
    out = record(
        "10h database unreachable",
        "PostgreSQL stopped for 25 s mid-backfill (swarm.db_retry_s 5 s), then started again",
    )
    with psycopg.connect(env.plain_dsn, autocommit=True) as conn:
        create_docs(conn, "k_outage", ROWS, seed=73)
        pgdata = Path(conn.execute("SHOW data_directory").fetchone()[0])
    cfg = env.make("k_outage", swarm={"db_retry_s": 5.0, "resume_poll_s": 1.0})
    assert commands.orchestrate(cfg, detach=True, progress=False) == 0
    status_when(cfg, lambda s: s["state"] == "running" and s["rows_done"] >= 40, 300, "the backfill under way")
    pg_ctl_embedded(pgdata, "stop")
    time.sleep(25)  # the outage itself (what is measured is that nothing is lost through it)
    pg_ctl_embedded(pgdata, "start")
    final, ids = _finish(env, cfg, out, fresh_embedder)
    with psycopg.connect(env.plain_dsn, autocommit=True) as conn:
        pauses = conn.execute(
            "SELECT count(*) FROM swarm.events WHERE migration_id = %s AND kind = 'paused'", [final["id"]]
        ).fetchone()[0]
    out.outcome = f"{final['state']} {final['rows_done']}/{final['rows_total']}; {pauses} pause(s) on record"
    assert final["state"] == "completed" and final["rows_done"] == final["rows_total"] == ROWS
    assert pauses >= 1
    assert out.rows_lost == 0, ids["lost"]
    assert out.rows_stale == 0, ids["stale"]


@pytest.mark.chaos
@pytest.mark.slow
def test_a_detached_migration_survives_its_coordinator(fresh_swarm: Any, fresh_embedder: Any, record: Any) -> None:
    env = fresh_swarm
    out = record(
        "10i coordinator SIGKILL, detached",
        "`orchestrate --detach`, then SIGKILL the coordinator mid-backfill; nothing else drives the migration",
    )
    with psycopg.connect(env.plain_dsn, autocommit=True) as conn:
        create_docs(conn, "k_detached", ROWS, seed=74)
    cfg = env.make("k_detached")
    assert commands.orchestrate(cfg, detach=True, progress=False) == 0
    status_when(cfg, lambda s: s["state"] == "running" and s["rows_done"] >= 40, 300, "the backfill under way")
    old = actor_pid("coordinator")
    os.kill(old, signal.SIGKILL)
    final, ids = _finish(env, cfg, out, fresh_embedder)
    new = actor_pid("coordinator")
    out.outcome = f"coordinator pid {old} -> {new}; {final['state']} {final['rows_done']}/{final['rows_total']}"
    assert new != old
    assert final["state"] == "completed" and final["rows_done"] == final["rows_total"] == ROWS
    assert out.rows_lost == 0, ids["lost"]
    assert out.rows_stale == 0, ids["stale"]
    assert out.rows_twice == 0, ids["twice"]
