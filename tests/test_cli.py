"""The command layer as operators drive it: separate `python -m swarm` processes sharing one swarm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def swarm_cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "swarm", *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=300
    )


def swarm_actors_cpus(env: dict[str, str]) -> float:
    """CPUs of the session's Ray head (this process is connected to it)."""
    import ray

    head = ray.get_runtime_context().get_node_id()
    return float(next(n["Resources"]["CPU"] for n in ray.nodes() if n["NodeID"] == head))


@pytest.fixture()
def cli_env(dsn: str, swarm_actors: dict[str, Any], minilm_q8: Path, minilm_f16: Path) -> dict[str, str]:
    return {
        "SWARM_DATABASE__DSN": dsn,
        "SWARM_SWARM__RAY_ADDRESS": swarm_actors["address"],
        "SWARM_EMBEDDING__MODEL_PATH": str(minilm_q8),
        "SWARM_LEGACY__MODEL_PATH": str(minilm_f16),
        "SWARM_SWARM__THREADS_PER_MIGRATOR": "1",
    }


def test_init_spawn_status_shutdown(tmp_path: Path, cli_env: dict[str, str]) -> None:
    bad = swarm_cli("init", "--topology", "mesh", cwd=tmp_path, env=cli_env)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: --topology = 'mesh': unknown topology; supported: hierarchical"
    for _ in range(2):  # running init twice is harmless
        r = swarm_cli("init", "--topology", "hierarchical", cwd=tmp_path, env=cli_env)
        assert r.returncode == 0, r.stderr
        assert "coordinator up" in r.stdout
    half = max(1, int(swarm_actors_cpus(cli_env)) // 2)
    cli_env = dict(cli_env, SWARM_SWARM__THREADS_PER_MIGRATOR=str(half))
    r = swarm_cli("spawn", "--type", "data-migrator", "--count", "2", cwd=tmp_path, env=cli_env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "spawned: data-migrator-0, data-migrator-1"
    r = swarm_cli("spawn", "--type", "data-migrator", "--count", "1", cwd=tmp_path, env=cli_env)
    # Each migrator asks Ray for its threads as CPUs: two of half the head's cores fill it; a third is refused
    # with the fix, not left pending for ever.
    assert r.returncode == 2, r.stdout
    assert r.stderr.strip().startswith(f"error: swarm.threads_per_migrator = {half}: 1 migrator(s) x {half} CPUs need")
    assert "but the Ray cluster has 0 free" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = swarm_cli("status", "--json", cwd=tmp_path, env=cli_env)
    st = json.loads(r.stdout)
    assert st["state"] == "none" and st["rows_total"] == 0 and st["shards"] == []
    r = swarm_cli("shutdown", cwd=tmp_path, env=cli_env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "stopped 3 actors"  # the head was not started by swarm: it stays up


def test_orchestrate_alone_then_status_json(tmp_path: Path, cli_env: dict[str, str], conn: Any) -> None:
    from tests.test_migration import create_table

    create_table(conn, "documents", "bigint", 120, seed=21)
    env = {**cli_env, "SWARM_SWARM__VALIDATORS": "0", "SWARM_SWARM__SHARD_ROWS": "50"}
    r = swarm_cli("orchestrate", "Migrate embeddings to Nomic", "--no-progress", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "completed: 120/120 rows embedded" in r.stdout
    st = json.loads(swarm_cli("status", "--json", cwd=tmp_path, env=env).stdout)
    assert st["migration"] == "Migrate embeddings to Nomic"
    assert (st["state"], st["rows_done"], st["rows_total"], st["rows_failed"]) == ("completed", 120, 120, 0)
    assert [s["state"] for s in st["shards"]] == ["done", "done", "done"]
    assert {"id", "state", "rows_done", "worker", "attempts"} <= set(st["shards"][0])
    assert st["rollout_percent"] == 0.0
    # A completed migration run again is not planned twice.
    r = swarm_cli("orchestrate", "--no-progress", cwd=tmp_path, env=env)
    assert r.returncode == 0
    assert "catching up: migration 1" in r.stdout
    assert conn.execute("SELECT count(*) FROM swarm.migrations").fetchone()[0] == 1
