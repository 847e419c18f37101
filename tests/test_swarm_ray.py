"""The swarm on real Ray: named detached actors, a migrator killed mid-shard, orchestrate killed and rerun,
PostgreSQL restarted, metrics on the node's endpoint (placement over several nodes: test_placement.py).

One swarm serves the module (actors are reused across tests: each test migrates its own table in one database).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest

from swarm import commands
from swarm import migration as mig
from swarm.core.config import Config
from swarm.store.db import Database
from tests.fix_db import REPO, config_for
from tests.support.texts import code_text
from tests.support.writer import AppWriter
from tests.test_migration import check_vectors, create_table


@pytest.fixture(scope="module")
def swarm_env(
    module_dsn: str,
    ray_head: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
    minilm_q8: Path,
    minilm_f16: Path,
) -> Any:
    from agents import actors as agents_ray

    agents_ray.kill_all()
    root = tmp_path_factory.mktemp("swarm-root")

    def make(table: str, **sections: dict[str, Any]) -> Config:
        base: dict[str, dict[str, Any]] = {
            "database": {"table": table},
            "swarm": {
                "ray_address": ray_head["address"],
                "validators": 0,
                "migrators": 2,
                "threads_per_migrator": 1,
            },
        }
        for k, v in sections.items():
            base.setdefault(k, {}).update(v)
        return config_for(module_dsn, root, **base)

    yield make, module_dsn, ray_head
    agents_ray.kill_all()


def test_orchestrate_completes_with_named_actors_and_metrics(swarm_env: Any) -> None:
    import ray

    make, dsn, head = swarm_env
    with psycopg.connect(dsn, autocommit=True) as conn:
        create_table(conn, "t_main", "bigint", 400, seed=11)
        cfg = make("t_main", swarm={"shard_rows": 100})
        assert commands.orchestrate(cfg, progress=False) == 0
        st = commands.status(cfg)
        assert st["state"] == "completed" and st["rows_done"] == st["rows_total"] == 400
        assert st["index"] and conn.execute("SELECT 1 FROM pg_indexes WHERE indexname = %s", [st["index"]]).fetchone()
        assert check_vectors(conn, "t_main", cfg.embedding.model_path) == 400
    names = set(ray.util.list_named_actors())
    assert {"coordinator", "data-migrator-0", "data-migrator-1"} <= names
    assert ray.get(ray.get_actor("data-migrator-0", namespace="swarm").info.remote())["rss_mb"] > 0
    # The swarm's metrics appear on the node's metrics endpoint (Ray exports them every few seconds).
    url = f"http://127.0.0.1:{head['metrics_port']}/metrics"
    # Ray exports on an interval: the counter reaches the last batches some seconds after the migration ends, so
    # the test waits for the exported value itself (not for the first export that names the metric).
    deadline, body, total = time.time() + 60, "", 0.0
    while time.time() < deadline:
        body = urllib.request.urlopen(url, timeout=5).read().decode()
        total = sum(
            float(line.rsplit(" ", 1)[1])
            for line in body.splitlines()
            if line.startswith("ray_swarm_rows_migrated") and 'migration="' in line
        )
        if total >= 400 and "swarm_tokens_per_second" in body:
            break
        time.sleep(2)
    assert "swarm_rows_migrated" in body, "swarm metrics not exported"
    assert total >= 400


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _wait(cfg: Config, pred: Any, timeout: float = 180) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = commands.status(cfg)
        if pred(st):
            return st
        time.sleep(0.2)
    raise AssertionError(f"timed out; last status {st}")


def test_repeated_content_is_embedded_once_across_migrators(swarm_env: Any) -> None:
    """A table of 12 distinct contents x 10 copies spread over 4 shards and 2 migrators: the shared cache (in
    the coordinator) has each distinct content computed by the model once in the whole swarm. Rows repeating an
    earlier row of their batch are counted apart from the cache hits (the model never saw them either way)."""
    import random

    import numpy as np
    import ray
    from pgvector.psycopg import register_vector

    from agents import actors as agents_ray

    make, dsn, _ = swarm_env
    agents_ray.kill_all()  # a swarm with this test's batch size: running migrators keep the config they started with
    rng = random.Random(77)
    distinct = [code_text(rng, words=(3, 30)) + f"\n# variant {i}" for i in range(12)]
    order = [distinct[i % 12] for i in range(120)]
    rng.shuffle(order)
    with psycopg.connect(dsn, autocommit=True) as conn:
        register_vector(conn)
        conn.execute("CREATE TABLE t_repeats (id int PRIMARY KEY, content text, embedding vector(384))")
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO t_repeats VALUES (%s, %s, %s)",
                [(i + 1, t, np.ones(384, dtype=np.float32)) for i, t in enumerate(order)],
            )
        cfg = make("t_repeats", swarm={"shard_rows": 30}, embedding={"batch_size": 8})
        assert commands.orchestrate(cfg, progress=False) == 0
        handles = [ray.get_actor(f"data-migrator-{i}", namespace="swarm") for i in range(2)]
        infos = ray.get([h.info.remote() for h in handles])
        hits, misses, repeats = (sum(i[k] for i in infos) for k in ("cache_hits", "cache_misses", "batch_repeats"))
        assert check_vectors(conn, "t_repeats", cfg.embedding.model_path) == 120
    # Shards of 30 rows in key order, read in batches of 8 (8, 8, 8, 6 each).
    batches = [order[lo + b : min(lo + b + 8, lo + 30)] for lo in range(0, 120, 30) for b in range(0, 30, 8)]
    in_batch = sum(len(b) - len(set(b)) for b in batches)
    assert misses == 12, f"{misses} model computations for 12 distinct contents ({hits} from caches)"
    assert (hits, repeats) == (108 - in_batch, in_batch) and in_batch > 0


def test_sigkill_migrator_mid_shard_resumes(swarm_env: Any) -> None:
    make, dsn, _ = swarm_env
    with psycopg.connect(dsn, autocommit=True) as conn:
        create_table(conn, "t_kill", "bigint", 1200, seed=12)
        cfg = make("t_kill", swarm={"shard_rows": 300}, embedding={"batch_size": 8})
        assert commands.orchestrate(cfg, detach=True, progress=False) == 0
        killed: list[tuple[int, int]] = []

        def victim(s: dict[str, Any]) -> tuple[int, int] | None:
            # A shard in the middle of its work, whose migrator process is alive and not one we killed.
            for sh in s["shards"]:
                if sh["state"] == "running" and 0 < sh["rows_done"] < sh["rows_planned"]:
                    pid = conn.execute("SELECT pid FROM swarm.agents WHERE name = %s", [sh["worker"]]).fetchone()[0]
                    if pid not in {p for _, p in killed} and _alive(pid):
                        return sh["id"], pid
            return None

        for _ in range(2):
            st = _wait(cfg, lambda s: victim(s) is not None)
            shard_id, pid = victim(st) or (0, 0)
            os.kill(pid, signal.SIGKILL)
            killed.append((shard_id, pid))
        final = _wait(cfg, lambda s: s["state"] in mig.TERMINAL, timeout=300)
        assert final["state"] == "completed", final["reason"]
        assert final["rows_done"] == final["rows_total"] == 1200
        attempts = {sh["id"]: sh["attempts"] for sh in final["shards"]}
        assert any(attempts[s] > 1 for s, _ in killed), attempts
        assert check_vectors(conn, "t_kill", cfg.embedding.model_path) == 1200
        # Resumed from the checkpoint: no shard reports more rows than it has.
        assert all(sh["rows_done"] <= sh["rows_planned"] for sh in final["shards"])


def test_live_writes_from_another_process_during_the_swarm(swarm_env: Any) -> None:
    """The application inserts, updates and deletes while the Ray swarm migrates: no row is left without a
    vector of its final content when the migration reports completed."""
    import threading

    make, dsn, _ = swarm_env
    with psycopg.connect(dsn, autocommit=True) as conn:
        create_table(conn, "t_live", "bigint", 600, seed=16)
    cfg = make("t_live", swarm={"shard_rows": 150}, embedding={"batch_size": 8})
    app = AppWriter(dsn, "t_live", (1, 600), rate=50, until="backfill", seed=0, next_id=20000)
    stop = threading.Event()
    writer = threading.Thread(target=app.run, args=(stop,), daemon=True)
    writer.start()
    try:
        assert commands.orchestrate(cfg, progress=False) == 0
    finally:
        stop.set()
        writer.join()
    counts = app.writes.counts
    assert counts["insert"] and counts["update"] and counts["delete"], counts
    st = commands.status(cfg)
    with psycopg.connect(dsn, autocommit=True) as conn:
        total = conn.execute("SELECT count(*) FROM t_live").fetchone()[0]
        assert st["state"] == "completed" and st["rows_done"] == st["rows_total"] == total
        assert check_vectors(conn, "t_live", cfg.embedding.model_path) == total


def test_orchestrate_killed_then_rerun_resumes(swarm_env: Any, tmp_path: Path) -> None:
    make, dsn, head = swarm_env
    with psycopg.connect(dsn, autocommit=True) as conn:
        create_table(conn, "t_rerun", "bigint", 800, seed=13)
    cfg = make("t_rerun", swarm={"shard_rows": 200}, embedding={"batch_size": 8})
    toml = tmp_path / "configs" / "rerun.toml"
    toml.parent.mkdir()
    toml.write_text(
        f'[database]\ndsn = "{dsn}"\ntable = "t_rerun"\n'
        f'[embedding]\nmodel_path = "{REPO}/model/all-MiniLM-L6-v2.Q8_0.gguf"\nbatch_size = 8\n'
        f'[legacy]\nmodel_path = "{REPO}/model/all-MiniLM-L6-v2.f16.gguf"\n'
        f'[swarm]\nray_address = "{head["address"]}"\nvalidators = 0\nshard_rows = 200\nthreads_per_migrator = 1\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "swarm", "-c", str(toml), "orchestrate", "--no-progress"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    st = _wait(cfg, lambda s: s["state"] == "running" and s["rows_done"] > 0, timeout=240)
    proc.kill()
    proc.wait()
    first_id = st["id"]
    r = subprocess.run(
        [sys.executable, "-m", "swarm", "-c", str(toml), "orchestrate", "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    st = commands.status(cfg)
    assert st["id"] == first_id, "the rerun must resume the same migration, not plan a new one"
    assert st["state"] == "completed" and st["rows_done"] == st["rows_total"] == 800


def test_postgres_restart_mid_run(swarm_env: Any, pg_server_dsn: str) -> None:
    if os.environ.get("SWARM_TEST_DSN"):
        pytest.skip("restarts only the embedded server")
    make, dsn, _ = swarm_env
    with psycopg.connect(dsn, autocommit=True) as conn:
        create_table(conn, "t_pgrestart", "bigint", 800, seed=14)
        pgdata = conn.execute("SHOW data_directory").fetchone()[0]
    cfg = make("t_pgrestart", swarm={"shard_rows": 200}, embedding={"batch_size": 8})
    assert commands.orchestrate(cfg, detach=True, progress=False) == 0
    _wait(cfg, lambda s: s["rows_done"] > 50)
    from swarm.store.embedded import pg_ctl_embedded

    pg_ctl_embedded(Path(pgdata), "restart")
    final = _wait(cfg, lambda s: s["state"] in mig.TERMINAL, timeout=300)
    assert final["state"] == "completed", final
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert check_vectors(conn, "t_pgrestart", cfg.embedding.model_path) == 800
    Database(dsn).close()
