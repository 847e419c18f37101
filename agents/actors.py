"""Ray's side of the agents: the plain classes in ``agents/`` wrapped as named, detached actors.

* ``coordinator``: async actor (its ``run`` awaits migrators while status calls interleave), restarted by Ray if
  its process dies (``max_restarts=-1``); it reads its state back from the database.
* ``data-migrator-N``: threaded actor so ``info``/``ping`` answer while a shard runs (the model itself is
  guarded by a lock), restarted by Ray after a crash, spread over the cluster's nodes.
* ``validator-N``: compares legacy and new search results.

Data-migrators ask Ray for what their model uses (:func:`placement`): on ``embedding.device = "cpu"``,
``threads_per_migrator`` CPUs (the llama.cpp threads they run; by default the largest node's cores shared out among
the migrators); on ``cuda``/``metal``, ``swarm.gpus_per_migrator`` GPUs and no CPU, so Ray places them on GPU
nodes and nowhere else. A request the cluster cannot meet is refused before anything starts (Ray would otherwise
leave the actor pending for ever). The coordinator and the validators ask for 0 CPUs: they mostly wait.
The configuration reaches them wrapped in :class:`Sealed`, whose repr hides it, so the DSN never shows among
actor arguments. (Not ``ray.put``: a restarted detached actor needs its constructor arguments after the driver
that owned such an object has gone.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agents.runtime import COORDINATOR, NAMESPACE, get_actor, list_agents
from swarm.core.config import threads_per_migrator
from swarm.core.errors import ConfigError, SwarmError

if TYPE_CHECKING:
    from swarm.core.config import Config


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


def placement(cfg: Config, migrators: int) -> tuple[dict[str, float], int]:
    """(Ray resources of one data-migrator, its llama.cpp threads) for a swarm of ``migrators``.

    Threads: ``swarm.threads_per_migrator``, else the largest live node's CPUs (as Ray counts them, not this
    process's ``cpu_count``) shared out among the migrators. A rehearsal asks for the same (it rehearses the
    placement too), though its stand-in model uses neither.
    """
    import ray

    node_cpus = [float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    threads = threads_per_migrator(cfg.swarm.threads_per_migrator, migrators, int(max(node_cpus, default=0)) or None)
    if cfg.embedding.device == "cpu":
        return {"num_cpus": float(threads), "num_gpus": 0.0}, threads
    return {"num_cpus": 0.0, "num_gpus": float(cfg.swarm.gpus_per_migrator)}, threads


def check_capacity(cfg: Config, resources: dict[str, float], count: int) -> None:
    """Refuse (:class:`ConfigError`) ``count`` more migrators that the cluster's free resources cannot place."""
    import ray

    free = ray.available_resources()
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    gpus, cpus = resources["num_gpus"], resources["num_cpus"]
    if gpus:
        have = float(free.get("GPU", 0))
        if have + 1e-9 < gpus * count:
            raise ConfigError(
                "swarm.gpus_per_migrator",
                gpus,
                f"{count} migrator(s) on embedding.device = {cfg.embedding.device} need {gpus * count:g} GPU(s) but "
                f"the Ray cluster has {have:g} free; add GPU nodes (`ray start --address=<head> --num-gpus=N`) or "
                "lower swarm.migrators",
            )
    if cpus:
        have = float(free.get("CPU", 0))
        biggest = max((float(r.get("CPU", 0)) for r in nodes), default=0.0)
        if have + 1e-9 < cpus * count or biggest + 1e-9 < cpus:
            raise ConfigError(
                "swarm.threads_per_migrator",
                int(cpus),
                f"{count} migrator(s) x {cpus:g} CPUs need {cpus * count:g} but the Ray cluster has {have:g} free "
                f"(largest node {biggest:g}); lower swarm.migrators or swarm.threads_per_migrator, or add a node "
                "(`ray start --address=<head>`)",
            )


def spawn_migrators(
    payload: dict[str, Any],
    count: int,
    *,
    rehearse: bool = False,
    threads: int | None = None,
    resources: dict[str, float] | None = None,
) -> list[str]:
    """Start ``count`` more data-migrators; each loads its own model. Returns the new names (ready).

    ``resources`` (``num_cpus``/``num_gpus``, from :func:`placement`) is what each asks Ray for."""
    from agents.migrator import DataMigrator

    options: dict[str, Any] = {"max_task_retries": 0, "max_concurrency": 4, "scheduling_strategy": "SPREAD"}
    options.update(resources or {})
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
    remote: Any = ray.remote(_reporting_init_errors(cls))
    handles = [
        remote.options(
            name=n,
            namespace=NAMESPACE,
            lifetime="detached",
            max_restarts=-1,
            **{"num_cpus": 0, **options, "get_if_exists": True},
        ).remote(n, _payload_ref(payload), **kw)
        for n in names
    ]
    try:
        ray.get([h.ping.remote() for h in handles])
    except ray.exceptions.RayTaskError as e:
        # A model or device the config got wrong: no agent of this batch is kept, and the error is raised as
        # itself, so the CLI prints its one line.
        for h in handles:
            ray.kill(h, no_restart=True)
        if isinstance(e.cause, SwarmError):
            raise e.cause from None
        raise
    coord = get_actor(COORDINATOR)
    if coord is not None:
        ray.get([coord.register.remote(n, kind) for n in names])
    return names


def _reporting_init_errors(cls: type) -> type:
    """``cls`` whose ``__init__`` keeps a :class:`SwarmError` and raises it from ``ping`` instead.

    Ray reports an exception in an actor's constructor as an ``ActorDiedError`` carrying only its text; from a
    method it comes back as the exception itself (``RayTaskError.cause``), so the caller can print its one line.
    """

    class Reporting(cls):  # type: ignore[valid-type, misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._init_error: SwarmError | None = None
            try:
                super().__init__(*args, **kwargs)
            except SwarmError as e:
                self._init_error = e

        def ping(self) -> Any:
            if self._init_error is not None:
                raise self._init_error
            return super().ping()

    Reporting.__name__ = Reporting.__qualname__ = cls.__name__
    return Reporting


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
