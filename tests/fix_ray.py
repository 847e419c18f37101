"""One real Ray runtime per test session: a local head node started as swarm starts it.

Swarm's actors are named and detached in the ``swarm`` namespace, so each test that creates them removes them
afterwards (``swarm_actors`` fixture) to keep tests independent.
"""

from __future__ import annotations

from collections.abc import Iterator
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
