"""Swarm metrics through ``ray.util.metrics`` (scraped from each node's metrics endpoint as ``ray_swarm_*``).

Outside a Ray worker (tests of the plain agent classes, the CLI) the same calls count in-process only, so the
agents' logic does not depend on Ray being there.
"""

from __future__ import annotations

from typing import Any

_TAGS = ("migration", "worker")


class _Local:
    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.value += value

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.value = value


class Metrics:
    """The counters and gauges one agent reports."""

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self._m: dict[str, Any] = {}
        try:
            import ray

            in_ray = ray.is_initialized() and ray.get_runtime_context().worker.mode == 1  # WORKER_MODE
        except Exception:
            in_ray = False
        specs = {
            "rows_migrated": ("counter", "Rows whose new embedding was written"),
            "rows_failed": ("counter", "Rows sent to the dead-letter table"),
            "batches": ("counter", "Batches committed"),
            "cache_hits": ("counter", "Vectors taken from a cache (a migrator's or the swarm's) instead of the model"),
            "cache_misses": ("counter", "Texts the model computed"),
            "batch_repeats": ("counter", "Rows repeating an earlier row of their batch (deduplicated, not looked up)"),
            "tokens_per_second": ("gauge", "Embedding throughput of the last batch"),
            "shards_done": ("counter", "Shards completed"),
        }
        for name, (kind, desc) in specs.items():
            if in_ray:
                from ray.util import metrics as rm

                cls = rm.Counter if kind == "counter" else rm.Gauge
                self._m[name] = cls(f"swarm_{name}", description=desc, tag_keys=_TAGS)
            else:
                self._m[name] = _Local()

    def inc(self, name: str, value: float, migration: int | str) -> None:
        if value:
            self._m[name].inc(value, tags={"migration": str(migration), "worker": self.worker})

    def set(self, name: str, value: float, migration: int | str) -> None:
        self._m[name].set(value, tags={"migration": str(migration), "worker": self.worker})


def _proc_status_mb(field: str) -> float:
    import os

    try:
        with open(f"/proc/{os.getpid()}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def rss_mb() -> float:
    """Resident memory of this process in MiB (VmRSS)."""
    return _proc_status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (VmHWM)."""
    return _proc_status_mb("VmHWM")
