"""Scenario 2: SIGKILL the coordinator actor; separately, SIGKILL the ``orchestrate`` process; a rerun resumes.

``orchestrate`` runs as a user runs it (``python -m swarm -c FILE orchestrate``, its own process). Ray restarts
a killed coordinator (detached, ``max_restarts=-1``) with an empty memory; the database says where the migration
is. The shards that were running are handed out again under a new attempt number, which fences their old
owners.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from swarm import commands
from swarm import migration as mig
from tests.faults.harness import REPO, actor_pid, cli_env, create_docs, status_when, tally, toml_for

ROWS = 400


def _toml(env: Any, table: str, shard_rows: int = 100) -> Path:
    path = env.root / "configs" / f"{table}.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(
        toml_for(
            {
                "database": {"dsn": env.dsn, "table": table},
                "embedding": {"model_path": str(REPO / "model/all-MiniLM-L6-v2.Q8_0.gguf"), "batch_size": 8},
                "legacy": {"model_path": str(REPO / "model/all-MiniLM-L6-v2.f16.gguf")},
                "swarm": {
                    "ray_address": env.head["address"],
                    "validators": 0,
                    "migrators": 2,
                    "threads_per_migrator": 1,
                    "shard_rows": shard_rows,
                    "max_rows_per_second": 24,
                },
            }
        )
    )
    return path


def _orchestrate(env: Any, toml: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "swarm", "-c", str(toml), "orchestrate", "--no-progress"],
            cwd=env.root,
            env=cli_env(),
            stdout=f,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.chaos
@pytest.mark.slow
def test_sigkill_coordinator_while_orchestrate_watches(fresh_swarm: Any, fresh_embedder: Any, record: Any) -> None:
    env = fresh_swarm
    out = record(
        "2a coordinator SIGKILL",
        "SIGKILL the coordinator actor while both migrators are mid-shard; `orchestrate` keeps running",
    )
    conn = psycopg.connect(env.plain_dsn, autocommit=True)
    create_docs(conn, "k_coord", ROWS, seed=22)
    # Two shards of 200 rows: the restarted coordinator finds both still held by their migrators.
    cfg = env.make("k_coord", swarm={"shard_rows": 200})
    log = env.root / "k_coord.log"
    proc = _orchestrate(env, _toml(env, "k_coord", shard_rows=200), log)
    hung = ""
    try:
        st = status_when(cfg, lambda s: s["state"] == "running" and s["rows_done"] >= 40, 300, "backfill under way")
        old_pid = actor_pid("coordinator")
        os.kill(old_pid, signal.SIGKILL)
        try:
            code: int | None = proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            code = None
            stuck = conn.execute(
                "SELECT application_name, state, wait_event_type, now() - xact_start FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name LIKE 'swarm%%' "
                "AND (state = 'idle in transaction' OR wait_event_type = 'Lock')"
            ).fetchall()
            hung = "HUNG: orchestrate still running 300 s after the kill; " + (
                ", ".join(f"{a} {s_ if not w else 'waits on a lock'}" for a, s_, w, _ in stuck) or "no stuck backend"
            )
    finally:
        if proc.poll() is None:
            proc.kill()
    final = commands.status(cfg)
    new_pid = actor_pid("coordinator")
    ids = tally(out, conn, mig.load(conn, final["id"]), fresh_embedder)
    requeued = sum(1 for sh in final["shards"] if sh["attempts"] > 1)
    leaks = env.check_leaks(conn) + ([str(log)] if env.secret in log.read_text(errors="replace") else [])
    errors = sorted({sh["error"] for sh in final["shards"] if sh["error"]})
    out.outcome = hung or (
        f"{final['state']} (orchestrate exit {code}); coordinator pid {old_pid} -> {new_pid}; "
        f"{requeued} shards handed out again; same migration #{final['id']}"
        + (f"; shard errors: {errors}" if errors else "")
    )
    conn.close()
    assert not hung, hung  # see test_shard_handover.py: the same migrator runs the shard twice at once
    assert code == 0, log.read_text()[-2000:]
    assert final["id"] == st["id"], "the restarted coordinator resumed the same migration"
    assert new_pid != old_pid
    assert out.rows_lost == 0, ids["lost"]
    assert out.rows_stale == 0, ids["stale"]
    assert out.rows_twice == 0, ids["twice"]
    assert final["rows_done"] == final["rows_total"] == ROWS
    assert not leaks, leaks


@pytest.mark.chaos
@pytest.mark.slow
def test_sigkill_orchestrate_then_coordinator_and_rerun(fresh_swarm: Any, fresh_embedder: Any, record: Any) -> None:
    env = fresh_swarm
    out = record(
        "2b orchestrate SIGKILL, rerun",
        "SIGKILL `orchestrate` mid-backfill; then SIGKILL the coordinator too (nothing drives the "
        "migration); run `orchestrate` again",
    )
    conn = psycopg.connect(env.plain_dsn, autocommit=True)
    create_docs(conn, "k_rerun", ROWS, seed=23)
    cfg = env.make("k_rerun")
    toml, log = _toml(env, "k_rerun"), env.root / "k_rerun.log"
    proc = _orchestrate(env, toml, log)
    try:
        st = status_when(cfg, lambda s: s["state"] == "running" and s["rows_done"] >= 40, 300, "backfill under way")
    finally:
        proc.kill()
        proc.wait()
    # The detached coordinator goes on alone.
    after_kill = st["rows_done"]
    going = status_when(cfg, lambda s: s["rows_done"] > after_kill + 16, 120, "progress without orchestrate")
    os.kill(actor_pid("coordinator"), signal.SIGKILL)
    # Ray restarts it, idle: once the migrators finish the shards they hold, nothing moves.
    stalled_at, since = -1, time.monotonic()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        s = commands.status(cfg)
        if s["rows_done"] != stalled_at:
            stalled_at, since = s["rows_done"], time.monotonic()
        elif time.monotonic() - since > 8 or s["state"] in mig.TERMINAL:
            break
        time.sleep(0.5)
    stalled = commands.status(cfg)
    rerun = subprocess.run(
        [sys.executable, "-m", "swarm", "-c", str(toml), "orchestrate", "--no-progress"],
        cwd=env.root,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    final = commands.status(cfg)
    ids = tally(out, conn, mig.load(conn, final["id"]), fresh_embedder)
    leaks = env.check_leaks(conn)
    leaks += [
        f
        for f, t in (
            ("first orchestrate output", log.read_text(errors="replace")),
            ("rerun output", rerun.stdout + rerun.stderr),
        )
        if env.secret in t
    ]
    out.outcome = (
        f"{final['state']} (rerun exit {rerun.returncode}, resumed #{final['id']}); without orchestrate "
        f"the coordinator went on to {going['rows_done']} rows; after its kill the migration stood "
        f"{stalled['state']} at {stalled['rows_done']}/{stalled['rows_total']} until the rerun"
    )
    conn.close()
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert final["id"] == st["id"], "the rerun must resume the migration, not plan a new one"
    assert "resuming migration" in rerun.stdout or final["state"] == "completed"
    assert out.rows_lost == 0, ids["lost"]
    assert out.rows_stale == 0, ids["stale"]
    assert out.rows_twice == 0, ids["twice"]
    assert final["rows_done"] == final["rows_total"] == ROWS
    assert not leaks, leaks
