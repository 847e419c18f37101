"""The one in-process swarm: preflight, plan, and a real coordinator with real migrators (and validators) as
plain classes on threads, against a real PostgreSQL and real GGUF models. Ray's own part is in the Ray tests.

``during(stop)`` runs on a thread alongside (the application), from before the plan; it is told to stop once
the coordinator's run returns, and joined. Then, as the product does after completion (the coordinator follows
the table), the runner keeps the coordinator following until the change queue is empty, so a scenario counts
the table once it has settled: every row the application wrote before it stopped then holds the vector of its
content.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from swarm import migration as mig
from swarm.core.config import Config


@dataclass
class InProcess:
    migration: mig.Migration
    result: dict[str, Any]
    coordinator: Any
    workers: dict[str, Any]

    def close(self) -> None:
        """Close every connection the agents hold (a template database must have no sessions)."""
        self.coordinator.db.close()
        self.coordinator.rounds.close()
        for w in self.workers.values():
            w.close()


def run_in_process(
    cfg: Config,
    dsn: str,
    *,
    migrators: int = 2,
    validators: int = 0,
    rehearse: bool = False,
    during: Callable[[threading.Event], Any] | None = None,
    name: str = "test migration",
    settle_timeout: float = 120.0,
    close: bool = False,
) -> InProcess:
    """Plan and run a migration of ``cfg``'s table to its end; see the module docstring."""
    stop = threading.Event()
    app = threading.Thread(target=during, args=(stop,), daemon=True) if during else None
    if app is not None:
        app.start()  # from before the plan: the application is there when the schema changes
    try:
        return _run(cfg, dsn, migrators, validators, rehearse, name, settle_timeout, close, stop, app)
    finally:
        stop.set()
        if app is not None:
            app.join()


def _run(
    cfg: Config,
    dsn: str,
    migrators: int,
    validators: int,
    rehearse: bool,
    name: str,
    settle_timeout: float,
    close: bool,
    stop: threading.Event,
    app: threading.Thread | None,
) -> InProcess:
    from agents.coordinator import Coordinator
    from agents.migrator import DataMigrator
    from agents.validator import Validator
    from swarm.commands import preflight
    from swarm.store.db import Database

    db = Database(dsn, application_name="swarm:test")
    info, table, server = preflight(cfg, db, rehearse=rehearse)
    m = mig.plan(
        db,
        cfg,
        name=name,
        model_id=cfg.embedding.model,
        model_sha256=info.sha256 if info else "rehearsal",
        dimension=cfg.new_dimension,
        server=server,
        table=table,
        rehearse=rehearse,
    )
    db.close()
    payload = cfg.to_payload(dsn)
    workers: dict[str, Any] = {
        f"data-migrator-{i}": DataMigrator(f"data-migrator-{i}", payload, rehearse=rehearse, n_threads=1)
        for i in range(migrators)
    }
    workers.update({f"validator-{i}": Validator(f"validator-{i}", payload) for i in range(validators)})

    async def call(worker: str, method: str, *args: Any) -> Any:
        return await asyncio.to_thread(getattr(workers[worker], method), *args)

    coord = Coordinator(payload, call=call)
    for n, w in workers.items():
        coord.register(n, w.kind)

    async def go() -> dict[str, Any]:
        try:
            result = await coord.run(m.id)
        finally:
            stop.set()
            if app is not None:
                await asyncio.to_thread(app.join)
        if result.get("state") == "completed" and coord.following() is not None:
            await _settle(coord, m, settle_timeout)
        await coord.stop()
        return result

    result = asyncio.run(go())
    run = InProcess(m, result, coord, workers)
    if close:
        run.close()
    return run


async def _settle(coord: Any, m: mig.Migration, timeout: float) -> None:
    """Let the coordinator's follow loop empty the change queue (bounded; fails with what it saw)."""
    deadline = time.monotonic() + timeout
    queued = -1
    while time.monotonic() < deadline:
        queued = await asyncio.to_thread(
            coord.db.run,
            lambda c: c.execute("SELECT count(*) FROM swarm.changes WHERE migration_id = %s", [m.id]).fetchone()[0],
        )
        if queued == 0:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the change queue of migration {m.id} still held {queued} rows after {timeout:.0f} s")
