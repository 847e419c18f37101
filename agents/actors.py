"""Ray's side of the agents: the plain classes in ``agents/`` wrapped as named, detached actors.

* ``coordinator``: async actor (its ``run`` awaits migrators while status calls interleave), restarted by Ray if
  its process dies (``max_restarts=-1``); it reads its state back from the database.
* ``data-migrator-N``: threaded actor so ``info``/``ping`` answer while a shard runs (the model itself is
  guarded by a lock), restarted by Ray after a crash, spread over the cluster's nodes.
* ``validator-N``: compares legacy and new search results.

All actors ask for 0 CPUs from Ray's scheduler: the migrators' llama.cpp threads are sized by swarm itself
(``threads_per_migrator``), and a 2-core machine must still host a coordinator, migrators and validators.
The configuration reaches them wrapped in :class:`Sealed`, whose repr hides it, so the DSN never shows among
actor arguments. (Not ``ray.put``: a restarted detached actor needs its constructor arguments after the driver
that owned such an object has gone.)
"""

from __future__ import annotations

from typing import Any

from agents.runtime import COORDINATOR, NAMESPACE, get_actor, list_agents
from swarm.core.config import threads_per_migrator  # noqa: F401 (re-exported for the commands)


class Sealed(dict):  # type: ignore[type-arg]
    """A payload dict that does not show its contents in reprs, logs or the Ray dashboard."""

    def __repr__(self) -> str:
        return "<swarm payload>"

    __str__ = __repr__


def _payload_ref(payload: dict[str, Any]) -> Sealed:
    return Sealed(payload)


def coordinator(payload: dict[str, Any]) -> Any:
    """Get or create the detached coordinator."""
    import ray

    from agents.coordinator import Coordinator

    existing = get_actor(COORDINATOR)
    if existing is not None:
        return existing
    cls = ray.remote(Coordinator)
    return cls.options(
        name=COORDINATOR,
        namespace=NAMESPACE,
        lifetime="detached",
        max_restarts=-1,
        max_task_retries=0,
        num_cpus=0,
        max_concurrency=1000,
        get_if_exists=True,
    ).remote(_payload_ref(payload))


def spawn_migrators(
    payload: dict[str, Any], count: int, *, rehearse: bool = False, threads: int | None = None
) -> list[str]:
    """Start ``count`` more data-migrators; each loads its own model. Returns the new names (ready)."""
    from agents.migrator import DataMigrator

    options = {"max_task_retries": 0, "max_concurrency": 4, "scheduling_strategy": "SPREAD"}
    return _spawn("data-migrator", DataMigrator, count, options, payload, rehearse=rehearse, n_threads=threads)


def spawn_validators(payload: dict[str, Any], count: int) -> list[str]:
    """Start ``count`` more validators. Returns the new names (ready)."""
    from agents.validator import Validator

    return _spawn("validator", Validator, count, {}, payload)


def _spawn(kind: str, cls: type, count: int, options: dict[str, Any], payload: dict[str, Any], **kw: Any) -> list[str]:
    """``count`` more named, detached ``kind-N`` actors of ``cls``, restarted by Ray after a crash, registered with
    the coordinator once they answer (a model that fails to load fails here)."""
    import ray

    existing = list_agents(f"{kind}-")
    start = 1 + max((int(n.rsplit("-", 1)[1]) for n in existing), default=-1)
    names = [f"{kind}-{i}" for i in range(start, start + count)]
    remote = ray.remote(cls)
    handles = [
        remote.options(
            name=n,
            namespace=NAMESPACE,
            lifetime="detached",
            max_restarts=-1,
            num_cpus=0,
            get_if_exists=True,
            **options,
        ).remote(n, _payload_ref(payload), **kw)
        for n in names
    ]
    ray.get([h.ping.remote() for h in handles])
    coord = get_actor(COORDINATOR)
    if coord is not None:
        ray.get([coord.register.remote(n, kind) for n in names])
    return names


def reregister(coord: Any) -> None:
    """After a coordinator restart its in-memory registry is empty: tell it who is alive."""
    import ray

    refs = [coord.register.remote(n, "data-migrator") for n in list_agents("data-migrator-")]
    refs += [coord.register.remote(n, "validator") for n in list_agents("validator-")]
    ray.get(refs)


def kill_all() -> list[str]:
    import ray

    killed = []
    for prefix in ("data-migrator-", "validator-", COORDINATOR):
        for name in list_agents(prefix):
            h = get_actor(name)
            if h is not None:
                ray.kill(h, no_restart=True)
                killed.append(name)
    return killed
