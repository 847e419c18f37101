"""The Ray runtime: connect to a cluster or start a local head node that outlives the command.

Actors live in the ``swarm`` namespace as named, detached actors, so every ``python -m swarm`` invocation (a new
driver process each time) finds the same coordinator and migrators. ``init`` records the head it started in
``.swarm/ray.json``; ``shutdown`` stops that head and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from swarm.core.errors import SwarmError
from swarm.core.log import get_logger
from swarm.store.embedded import ensure_private_dir

NAMESPACE = "swarm"
COORDINATOR = "coordinator"
KIND_PREFIX = {
    "data-migrator": "data-migrator",
    "validator": "validator",
    "migration-coordinator": COORDINATOR,
}

log = get_logger()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray_bin() -> str:
    candidate = Path(sys.executable).with_name("ray")
    return str(candidate) if candidate.exists() else (shutil.which("ray") or "ray")


def head_file(state_dir: Path) -> Path:
    return state_dir / "ray.json"


def _read_head(state_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads(head_file(state_dir).read_text())
    except (FileNotFoundError, ValueError):
        return None


def _port_open(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=1):
            return True
    except OSError:
        return False


def start_head(state_dir: Path, *, dashboard_host: str = "127.0.0.1", num_cpus: int | None = None) -> dict[str, Any]:
    """``ray start --head`` on free ports, dashboard and metrics on ``dashboard_host``; returns its record."""
    ensure_private_dir(state_dir)
    port, dash, metrics, client = _free_port(), _free_port(), _free_port(), _free_port()
    # A temp dir of its own (short: Ray's Unix sockets live under it) lets stop_head stop this head and no other.
    temp_dir = f"/tmp/swarm-ray-{hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:10]}"
    cmd = [
        _ray_bin(),
        "start",
        "--head",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        f"--dashboard-host={dashboard_host}",
        f"--dashboard-port={dash}",
        f"--metrics-export-port={metrics}",
        f"--ray-client-server-port={client}",
        f"--temp-dir={temp_dir}",
        f"--num-cpus={num_cpus or os.cpu_count() or 1}",
        "--disable-usage-stats",
    ]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SwarmError(f"ray start --head failed: {tail[0]}")
    record = {
        "address": f"127.0.0.1:{port}",
        "dashboard": f"http://{dashboard_host}:{dash}",
        "metrics_port": metrics,
        "temp_dir": temp_dir,
        "client_port": client,
        "started_by_swarm": True,
        "started_at": time.time(),
    }
    path = head_file(state_dir)
    path.write_text(json.dumps(record))
    os.chmod(path, 0o600)
    log.info("ray.head_started", **record)
    return record


def connect(
    state_dir: Path, address: str | None = None, *, start: bool = True, dashboard_host: str = "127.0.0.1"
) -> dict[str, Any]:
    """Connect this process to Ray (idempotent). Returns the head record (address, dashboard, metrics port)."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    record: dict[str, Any] | None
    if address:
        record = {"address": address, "started_by_swarm": False}
    else:
        record = _read_head(state_dir)
        if record is None or not _port_open(record["address"]):
            if not start:
                raise SwarmError("no swarm is running; run `python -m swarm init` first")
            record = start_head(state_dir, dashboard_host=dashboard_host)
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(
            address=record["address"],
            namespace=NAMESPACE,
            logging_level="ERROR",  # type: ignore[arg-type]  # ray annotates int; setup_logger takes a name too
            log_to_driver=False,
            include_dashboard=None,
        )
    return record


def stop_head(state_dir: Path) -> bool:
    """Stop the head node swarm started (if any)."""
    record = _read_head(state_dir)
    if not record or not record.get("started_by_swarm"):
        return False
    _kill_tree(record["temp_dir"])
    if record.get("client_port"):
        _kill_tree(f"--port={record['client_port']}", only="ray.util.client.server")
    head_file(state_dir).unlink(missing_ok=True)
    return True


def _kill_tree(marker: str, only: str | None = None) -> None:
    """Stop the processes of the head whose command lines name ``marker`` (its temp dir), and their children.

    ``ray stop`` would stop every Ray node on the machine, including ones swarm did not start.
    """
    import psutil

    roots = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
            if any(marker in part for part in cmd) and (only is None or any(only in part for part in cmd)):
                roots.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    procs = {p.pid: p for p in roots}
    for p in roots:
        try:
            for c in p.children(recursive=True):
                procs[c.pid] = c
        except psutil.NoSuchProcess:
            pass
    for p in procs.values():
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _gone, alive = psutil.wait_procs(list(procs.values()), timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def get_actor(name: str) -> Any | None:
    import ray

    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return None


def list_agents(prefix: str) -> list[str]:
    """Names of live named actors in the swarm namespace starting with ``prefix`` (sorted by index).

    Asks the GCS of the cluster this process is connected to (not the state API, which would have to find the
    dashboard and, on a machine with two clusters, cannot tell which is ours).
    """
    import ray

    names = [n for n in ray.util.list_named_actors(all_namespaces=False) if n.startswith(prefix)]

    def idx(n: str) -> int:
        tail = n.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    return sorted(set(names), key=idx)
