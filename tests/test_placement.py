"""Where Ray places data-migrators: by the resources they ask for, on real Ray with a second node on this machine.

On ``embedding.device = "cuda"`` a migrator asks for ``swarm.gpus_per_migrator`` GPUs, so it goes to a node that has
them; the second node's GPUs are logical (``ray start --num-gpus 2``): Ray accounts for them, no device is used,
and the migrators are rehearsal ones (the same actors and placement with the stand-in model; a real model would
need a CUDA build of llama.cpp, whose absence is the last test). On ``"cpu"`` a migrator asks for
``threads_per_migrator`` CPUs, so a swarm larger than one node is spread by resources, not by SPREAD's luck.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from swarm import commands
from swarm.core.errors import ConfigError
from tests.fix_ray import extra_node
from tests.test_migration import check_vectors, create_table

pytestmark = pytest.mark.slow  # each test starts and stops a Ray node (about a minute)


def _migrator_nodes() -> list[str]:
    import ray

    from agents.runtime import list_agents

    handles = [ray.get_actor(n, namespace="swarm") for n in list_agents("data-migrator-")]
    return [info["node_id"] for info in ray.get([h.info.remote() for h in handles])]


def _head_cpus() -> int:
    import ray

    from agents.runtime import list_agents

    assert not list_agents("data-migrator-")
    head = ray.get_runtime_context().get_node_id()  # the driver's node: the session's head
    return int(next(n["Resources"]["CPU"] for n in ray.nodes() if n["NodeID"] == head))


def test_gpu_migrators_go_to_the_gpu_node_and_no_further(
    swarm_actors: dict[str, Any], make_config: Any, dsn: str
) -> None:
    import ray

    with extra_node(swarm_actors, num_cpus=1, num_gpus=2) as gpu_node:
        cfg = make_config(
            embedding={"device": "cuda"},
            swarm={"ray_address": swarm_actors["address"], "migrators": 2, "validators": 0},
        )
        from swarm.store.db import Database
        from swarm.store.schema import init_schema

        init_schema(Database(dsn))  # the bookkeeping the migrators register in (orchestrate's preflight does it)
        commands.ensure_swarm(cfg, dsn, rehearse=True)
        assert _migrator_nodes() == [gpu_node, gpu_node], "a GPU migrator was placed on the CPU-only head"
        assert ray.available_resources().get("GPU", 0) == 0
        # A third would wait for ever for a GPU: it is refused, with the fix.
        with pytest.raises(ConfigError, match=r"need 1 GPU\(s\) but the Ray cluster has 0 free"):
            commands.spawn(cfg, "data-migrator", 1, rehearse=True)
        from agents import actors as agents_ray

        agents_ray.kill_all()


def test_cuda_without_a_gpu_build_fails_before_any_write(
    swarm_actors: dict[str, Any], make_config: Any, conn: psycopg.Connection, minilm_q8: Path, minilm_f16: Path
) -> None:
    from model.embedder import gpu_offload_supported

    if gpu_offload_supported():
        pytest.skip("this llama-cpp-python has a GPU backend: the failure cannot happen here")
    create_table(conn, "docs", "bigint", 20)
    with extra_node(swarm_actors, num_cpus=1, num_gpus=1):
        cfg = make_config(
            database={"table": "docs"},
            embedding={"device": "cuda"},
            swarm={"ray_address": swarm_actors["address"], "migrators": 1, "validators": 0},
        )
        with pytest.raises(ConfigError) as err:
            commands.orchestrate(cfg, progress=False)
        from agents import actors as agents_ray

        agents_ray.kill_all()
    msg = str(err.value)  # the CLI prints it as "error: <msg>"
    assert "\n" not in msg
    assert msg.startswith("embedding.device = 'cuda': this llama-cpp-python has no GPU backend")
    assert 'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python' in msg
    assert conn.execute("SELECT count(*) FROM swarm.migrations").fetchone()[0] == 0
    columns = conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'docs'").fetchall()
    assert {r[0] for r in columns} == {"id", "content", "embedding"}


def test_a_swarm_larger_than_the_head_is_spread_by_cpus(
    swarm_actors: dict[str, Any], make_config: Any, conn: psycopg.Connection, minilm_q8: Path, minilm_f16: Path
) -> None:
    """Each migrator asks for as many CPUs as the head has, so the second one can only run on the second node."""
    import ray

    head_cpus = _head_cpus()
    create_table(conn, "t_nodes", "bigint", 300, seed=15)
    with extra_node(swarm_actors, num_cpus=head_cpus) as second:
        cfg = make_config(
            database={"table": "t_nodes"},
            swarm={
                "ray_address": swarm_actors["address"],
                "migrators": 2,
                "validators": 0,
                "threads_per_migrator": head_cpus,
                "shard_rows": 50,
            },
        )
        assert commands.orchestrate(cfg, progress=False) == 0
        nodes = _migrator_nodes()
        head = ray.get_runtime_context().get_node_id()
        assert sorted(nodes) == sorted([head, second]), nodes
        workers = {r[0] for r in conn.execute("SELECT DISTINCT worker FROM swarm.batches")}
        from agents import actors as agents_ray

        agents_ray.kill_all()
    assert workers == {"data-migrator-0", "data-migrator-1"}, "one of the migrators did no work"
    assert check_vectors(conn, "t_nodes", cfg.embedding.model_path) == 300
