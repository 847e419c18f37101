"""One real Ray runtime per test session: a local head node started as swarm starts it.

Swarm's actors are named and detached in the ``swarm`` namespace, so each test that creates them removes them
afterwards (``swarm_actors`` fixture) to keep tests independent.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import ray

    from agents import runtime

    state = tmp_path_factory.mktemp("ray-state")
    record = runtime.start_head(state)
    runtime.connect(state, record["address"])
    yield record
    ray.shutdown()
    runtime.stop_head(state)


@pytest.fixture()
def swarm_actors(ray_head: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The session's Ray head; every swarm actor is killed after the test."""
    from agents import actors as agents_ray

    agents_ray.kill_all()
    yield ray_head
    agents_ray.kill_all()


@contextmanager
def extra_node(head: dict[str, Any], *, num_cpus: int, num_gpus: int = 0) -> Iterator[str]:
    """A second Ray node on this machine joined to the session's head (``--num-gpus`` makes logical GPUs: Ray
    places by them, nothing uses a device). Yields its node id; afterwards its processes, found by its own temp
    dir, are stopped by pid and the head has seen it die."""
    import psutil
    import ray

    token = uuid.uuid4().hex[:8]
    temp_dir = f"/tmp/swarm-node-{token}"  # short: Ray's Unix sockets live under it
    marker = f"swarm_test_node_{token}"
    cmd = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        f"--address={head['address']}",
        "--node-ip-address=127.0.0.1",
        f"--num-cpus={num_cpus}",
        f"--num-gpus={num_gpus}",
        f"--resources={json.dumps({marker: 1})}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    started = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stderr[-2000:]

    def node_id() -> str | None:
        return next((n["NodeID"] for n in ray.nodes() if marker in n["Resources"] and n["Alive"]), None)

    nid = None
    try:
        nid = _until(node_id, 60, "the second node to join")
        _until(lambda: ray.available_resources().get(marker), 60, "the second node's resources")
        yield nid
    finally:
        procs = [p for p in psutil.process_iter(["cmdline"]) if temp_dir in " ".join(p.info["cmdline"] or [])]
        for p in procs:
            with contextlib.suppress(psutil.Error):
                for c in p.children(recursive=True):
                    c.kill()
                p.kill()
        # (A dead node's record keeps its id but loses its resources.)
        _until(lambda: not any(n["NodeID"] == nid and n["Alive"] for n in ray.nodes()), 120, "the node to be gone")


def _until(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
