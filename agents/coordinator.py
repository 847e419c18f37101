"""The migration-coordinator: hands shards to data-migrators, drains live changes, builds the index.

A plain class whose async ``run`` drives the migration; :mod:`swarm.swarm` wraps it with ``ray.remote`` as the
named, detached ``coordinator`` actor (async, so ``status``-type calls interleave with the run). Workers are
reached through a ``call(name, method, *args) -> awaitable`` function: Ray actor handles in the swarm, plain
objects on threads in tests of the logic.

The database is the source of truth. A coordinator restarted by Ray (or an ``orchestrate`` run again) puts the
shards left ``running`` back to ``pending``; their old owners are fenced by the shard's attempt number.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from agents.cache import Entry, SharedCache
from agents.rounds import ValidationRounds
from swarm import migration as mig
from swarm.core.config import Config
from swarm.core.log import configure, get_logger
from swarm.store.db import Database, ensure_vector

log = get_logger()

Call = Callable[..., Awaitable[Any]]


def _is_worker_death(e: BaseException) -> bool:
    try:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        return isinstance(e, (RayActorError, ActorDiedError, ActorUnavailableError))
    except ImportError:  # pragma: no cover
        return False


class Coordinator:
    """Runs migrations for the swarm it belongs to."""

    kind = "migration-coordinator"

    def __init__(self, payload: dict[str, Any], call: Call | None = None) -> None:
        configure(json=True, actor="coordinator")
        self.cfg = Config.from_payload(payload)
        self.dsn: str = payload["dsn"]
        self.db = Database(self.dsn, application_name="swarm:coordinator")
        self._call = call or _ray_call
        self._task: asyncio.Task[dict[str, Any]] | None = None
        self._mid: int | None = None
        self._workers: dict[str, str] = {}
        self._follow: asyncio.Task[None] | None = None
        self.cache = SharedCache(self.cfg.embedding.cache_size if self.cfg.embedding.shared_cache else 0)
        self.events: list[dict[str, Any]] = []
        self.rounds = ValidationRounds(self)  # validation during and after the backfill (agents/rounds.py)
        if call is None and _reconstructed():
            # Ray brought this actor back after its process died: pick the migration up again by itself,
            # whether or not an `orchestrate` is watching (--detach).
            _call_self_later("resume")

    # -- registry ------------------------------------------------------------------------------------------
    def register(self, name: str, kind: str) -> list[str]:
        self._workers[name] = kind
        return sorted(self._workers)

    def unregister(self, name: str) -> None:
        self._workers.pop(name, None)

    def workers(self, kind: str = "data-migrator") -> list[str]:
        return sorted((n for n, k in self._workers.items() if k == kind), key=_index)

    def ping(self) -> str:
        return "coordinator"

    # -- the shared embedding cache (agents.cache) ---------------------------------------------------------
    def cache_claim(self, owner: str, keys: list[bytes]) -> tuple[dict[bytes, Entry], list[bytes], list[bytes]]:
        return self.cache.claim(owner, keys)

    def cache_put(self, owner: str, items: dict[bytes, Entry]) -> None:
        self.cache.put(owner, items)

    def cache_release(self, owner: str, keys: list[bytes]) -> None:
        self.cache.release(owner, keys)

    async def cache_wait(self, keys: list[bytes], timeout: float) -> dict[bytes, Entry]:
        return await self.cache.wait(keys, timeout)

    def cache_stats(self) -> dict[str, Any]:
        return self.cache.stats()

    # -- lifecycle -----------------------------------------------------------------------------------------
    async def start(self, mid: int) -> bool:
        """Start (or resume) migration ``mid`` in the background. False if it is already running."""
        if self._task is not None and not self._task.done():
            return False
        await self._stop_following()
        self._mid = mid
        self._task = asyncio.get_running_loop().create_task(self.run(mid))
        return True

    async def resume(self) -> int | None:
        """After a restart: register the agents that are alive and resume the table's unfinished migration (or
        follow its completed one). Returns the migration resumed, if any."""
        from agents.runtime import list_agents

        for prefix, kind in (("data-migrator-", "data-migrator"), ("validator-", "validator")):
            for name in list_agents(prefix):
                self.register(name, kind)
        m = await self._db(lambda c: mig.latest(c, self.cfg), "latest")
        if m is None or (m.state in mig.TERMINAL and m.state != "completed"):
            return None
        if m.state == "completed" and (m.rehearsal or m.phase == "decommissioned"):
            return None
        log.warning("coordinator.resumed", migration=m.id, state=m.state, phase=m.phase)
        await self.start(m.id)
        return m.id

    def running(self) -> int | None:
        return self._mid if self._task is not None and not self._task.done() else None

    async def wait(self) -> dict[str, Any] | None:
        if self._task is None:
            return None
        return await asyncio.shield(self._task)

    def following(self) -> int | None:
        """The completed migration whose later changes this coordinator keeps embedding, if any."""
        return self._mid if self._follow is not None and not self._follow.done() else None

    async def _stop_following(self) -> None:
        if self._follow is not None and not self._follow.done():
            self._follow.cancel()
            try:
                await self._follow
            except (asyncio.CancelledError, Exception):
                pass
        self._follow = None

    async def stop(self) -> bool:
        """Pause: stop handing out shards and fence the running ones; a later start resumes."""
        await self._stop_following()
        if self._task is None or self._task.done():
            return False
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, Exception):
            pass
        mid = self._mid
        if mid is not None:
            await asyncio.to_thread(self.db.run, lambda c: mig.requeue_running(c, mid), what="pause")
        return True

    # -- the run -------------------------------------------------------------------------------------------
    async def _db(self, fn: Callable[[psycopg.Connection], Any], what: str = "query") -> Any:
        return await asyncio.to_thread(self.db.run, fn, what=what)

    async def run(self, mid: int) -> dict[str, Any]:
        """Backfill every shard, drain live changes until none is left, build the index, finish."""
        m: mig.Migration = await self._db(lambda c: mig.load(c, mid), "load")
        if m.state == "completed" and not m.rehearsal:
            return await self._catch_up(m)
        if m.state in mig.TERMINAL:
            return {"state": m.state}
        log.info("migration.run", migration=mid, state=m.state)
        try:
            await self._db(lambda c: mig.set_state(c, mid, "running", phase="backfill"), "state")
            await self._db(lambda c: mig.requeue_running(c, mid), "requeue")
            failed = await self._backfill(m)
            if failed:
                return await self._fail(m, failed)
            await self._db(lambda c: mig.set_state(c, mid, "running", phase="changes"), "state")
            await self._drain(m)
            if m.rehearsal:
                return await self._finish_rehearsal(m)
            await self._db(lambda c: mig.set_state(c, mid, "running", phase="index"), "state")
            server = await self._db(ensure_vector, "server")
            await asyncio.to_thread(mig.build_index, self.db, m, self.cfg.swarm.index, server)
            # Rows changed while the index was built.
            await self._drain(m)
            after_build = await self.after_backfill(m)
            if after_build is not None:
                return after_build
            return await self._complete(m)
        except asyncio.CancelledError:
            log.warning("migration.paused", migration=mid)
            raise
        except Exception as e:
            log.exception("migration.error", migration=mid)
            reason = f"{type(e).__name__}: {e}"
            await self._db(lambda c: mig.set_state(c, mid, "failed", phase="error", reason=reason))
            return {"state": "failed", "reason": reason}

    async def after_backfill(self, m: mig.Migration) -> dict[str, Any] | None:
        """The final validation round (agents/rounds.py, every validator), then with ``rollout.auto`` the rollout
        step by step. FAIL rolls back. INCONCLUSIVE fails closed without destroying anything: the migration
        completes with the reason on record and the rollout held at 0% (decommission refuses).

        Returns None to go on and complete, or the result of the rollback.
        """
        validators = self.workers("validator")
        if not validators:
            log.warning("validation.skipped", migration=m.id, reason="no validators in the swarm")
            return None
        await self._db(lambda c: mig.set_state(c, m.id, "validating", phase="validate"), "state")
        report = await self.rounds.final(m)
        if report["verdict"] == "FAIL":
            return await self._fail(m, "validation failed: " + "; ".join(report["failures"]))
        if report["verdict"] != "PASS":
            reason = "validation INCONCLUSIVE, rollout held at 0%: " + "; ".join(report["failures"])
            log.warning("validation.inconclusive", migration=m.id, reason=reason)
            await self._db(lambda c: mig.set_state(c, m.id, "validating", phase="validate", reason=reason), "state")
            return None
        if self.cfg.rollout.auto:
            await self._db(lambda c: mig.set_state(c, m.id, "validating", phase="rollout"), "state")
            result = await self._call(validators[0], "rollout", m.id)
            if result.get("failures"):
                return await self._fail(m, "rollout failed: " + "; ".join(result["failures"]))
        return None

    async def _await_worker(self, worker: str, timeout: float = 180.0) -> str:
        """Wait until a worker answers again (Ray restarts a dead migrator and reloads its model)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self._call(worker, "ping")
                return worker
            except Exception as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{worker} did not come back within {timeout:.0f} s") from e
                await asyncio.sleep(1.0)

    async def _backfill(self, m: mig.Migration) -> str | None:
        """Hand pending shards to idle migrators until none is left. Returns why it failed, or None."""
        mid = m.id
        max_attempts = self.cfg.swarm.max_attempts
        idle = list(self.workers())
        if not idle:
            raise RuntimeError("no data-migrators registered; run `python -m swarm spawn --type data-migrator`")
        shards: dict[asyncio.Future[Any], tuple[str, int, int]] = {}
        returning: dict[asyncio.Future[Any], str] = {}  # workers being restarted by Ray
        while True:
            while idle:
                worker = idle[0]
                claim = await self._db(lambda c, w=worker: mig.claim_shard(c, mid, w), "claim")
                if claim is None:
                    break
                idle.pop(0)
                shard_id, attempt = claim
                fut = asyncio.ensure_future(
                    self._call(worker, "run_shard", mid, shard_id, attempt, len(self.workers()))
                )
                shards[fut] = (worker, shard_id, attempt)
                log.info("shard.assigned", migration=mid, shard=shard_id, worker=worker, attempt=attempt)
            if not shards:
                pending = await self._db(
                    lambda c: c.execute(
                        "SELECT count(*) FROM swarm.shards WHERE migration_id = %s AND state = 'pending'",
                        [mid],
                    ).fetchone()[0],
                    "pending",
                )
                if not (pending and returning):
                    break  # nothing left, or nobody left to take it
            # Validation rounds while the backfill runs (agents/rounds.py): a round with strong evidence against
            # the new model stops the backfill here, and the migration rolls back.
            stop = await self.rounds.maybe_round(m)
            if stop is not None:
                for f in [*shards, *returning]:
                    f.cancel()
                return stop
            done, _ = await asyncio.wait(
                [*shards, *returning], timeout=self.rounds.tick, return_when=asyncio.FIRST_COMPLETED
            )
            for fut in done:
                if fut in returning:
                    worker = returning.pop(fut)
                    if fut.exception() is None:
                        idle.append(worker)
                    else:
                        log.error("worker.lost", worker=worker, error=str(fut.exception()))
                    continue
                worker, shard_id, attempt = shards.pop(fut)
                err = fut.exception()
                if err is None:
                    idle.append(worker)
                    continue
                died = _is_worker_death(err)
                reason = "worker died" if died else f"{type(err).__name__}: {str(err).splitlines()[-1][:500]}"
                state = await self._db(
                    lambda c, s=shard_id, a=attempt, r=reason: mig.release_shard(
                        c, mid, s, a, error=r, max_attempts=max_attempts
                    ),
                    "release",
                )
                log.warning(
                    "shard.failed",
                    migration=mid,
                    shard=shard_id,
                    worker=worker,
                    attempt=attempt,
                    reason=reason,
                    now=state,
                )
                self.events.append({"t": time.time(), "shard": shard_id, "worker": worker, "reason": reason})
                if died:
                    returning[asyncio.ensure_future(self._await_worker(worker))] = worker
                else:
                    idle.append(worker)
                if state == "failed":
                    for f in [*shards, *returning]:
                        f.cancel()
                    return f"shard {shard_id} failed {max_attempts} times: {reason}"
        for f in returning:
            f.cancel()
        states = await self._db(
            lambda c: c.execute(
                "SELECT state, count(*) FROM swarm.shards WHERE migration_id = %s GROUP BY state", [mid]
            ).fetchall(),
            "states",
        )
        left = {s: n for s, n in states if s != "done"}
        return f"shards not done: {left}" if left else None

    async def _drain(self, m: mig.Migration) -> None:
        """Embed queued changes until the queue is empty and no row lacks a vector (or a dead letter)."""
        workers = self.workers()
        for _round in range(1000):
            await self._drain_queue(m, workers)
            # Rows with no vector and no queue entry (inserted with the trigger missing, or skipped): queue them.
            queued = await self._db(lambda c: mig.enqueue_missing(c, m), "enqueue_missing")
            if not queued:
                return
        raise RuntimeError("changes did not settle after 1000 rounds")

    async def _drain_queue(self, m: mig.Migration, workers: list[str]) -> None:
        """Have every migrator drain the change queue until a round finds it empty."""
        while True:
            results = await asyncio.gather(
                *(self._call(w, "drain_changes", m.id, None, len(workers)) for w in workers),
                return_exceptions=True,
            )
            errors = [r for r in results if isinstance(r, BaseException)]
            done = sum(r for r in results if isinstance(r, int))
            if errors and not done:
                if all(_is_worker_death(e) for e in errors):
                    await asyncio.sleep(1.0)
                    continue
                raise errors[0]
            if not done:
                return

    async def _catch_up(self, m: mig.Migration) -> dict[str, Any]:
        """A completed migration run again: embed what the application changed since (the sync trigger queued
        it and nulled the stale vectors), then complete again. Like a vectorizer worker's next pass.
        ``_complete`` does the draining."""
        await self._db(lambda c: mig.set_state(c, m.id, "running", phase="changes"), "state")
        return await self._complete(m)

    async def _complete(self, m: mig.Migration) -> dict[str, Any]:
        # Rows the application changed while validation and rollout ran: their vectors before the counts.
        if not m.rehearsal:
            await self._drain(m)

        def go(conn: psycopg.Connection) -> dict[str, Any]:
            with conn.transaction():
                total, done, failed = mig.finish_counts(conn, m)
                conn.execute(
                    "UPDATE swarm.migrations SET rows_total = %s, rows_done = %s, rows_failed = %s WHERE id = %s",
                    [total, done, failed, m.id],
                )
                mig.set_state(conn, m.id, "completed", phase="done")
                return {"state": "completed", "rows_total": total, "rows_done": done, "rows_failed": failed}

        result = await self._db(go, "complete")
        log.info("migration.completed", migration=m.id, **{k: v for k, v in result.items() if k != "state"})
        if not m.rehearsal and self.cfg.swarm.follow_interval_s > 0:
            # Like a vectorizer worker: the sync trigger goes on queueing the application's writes, and the
            # swarm goes on embedding them, until rollback, decommission or shutdown.
            self._follow = asyncio.get_running_loop().create_task(self._follow_changes(m))
        return result

    async def _follow_changes(self, m: mig.Migration) -> None:
        interval = self.cfg.swarm.follow_interval_s
        failures = 0
        log.info("migration.following", migration=m.id, interval_s=interval)
        while True:
            await asyncio.sleep(interval if not failures else min(60.0, interval * 2**failures))
            try:
                state, queued = await self._db(
                    lambda c: c.execute(
                        "SELECT state, (SELECT count(*) FROM swarm.changes WHERE migration_id = m.id) "
                        "FROM swarm.migrations m WHERE id = %s",
                        [m.id],
                    ).fetchone(),
                    "follow",
                )
                if state != "completed":
                    log.info("migration.unfollowed", migration=m.id, state=state)
                    return
                if queued and self.workers():
                    await self._drain_queue(m, self.workers())
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the loop outlives a restarting server or worker
                failures += 1
                log.warning("migration.follow_error", migration=m.id, error=f"{type(e).__name__}: {e}")

    async def _finish_rehearsal(self, m: mig.Migration) -> dict[str, Any]:
        result = await self._complete(m)
        # The scratch column and its trigger go: a rehearsal leaves the table as it found it.
        await asyncio.to_thread(
            mig.run_ddl,
            self.db,
            [*m.target.drop_sync(m.id), m.target.drop_column()],
            lock_timeout_ms=self.cfg.swarm.lock_timeout_ms,
            retries=self.cfg.swarm.ddl_retries,
        )
        return result

    async def _fail(self, m: mig.Migration, reason: str) -> dict[str, Any]:
        log.error("migration.failing", migration=m.id, reason=reason)
        result = await asyncio.to_thread(mig.rollback, self.db, m, self.cfg, reason=reason)
        return {"state": "rolled_back", "reason": reason, **result}


def _index(name: str) -> int:
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _reconstructed() -> bool:
    """True in a coordinator actor that Ray restarted after its process died."""
    try:
        import ray

        return bool(ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # not in a Ray actor
        return False


def _call_self_later(method: str) -> None:
    """Call one of this actor's own methods once its constructor has returned (from a thread: the actor's
    event loop only starts serving calls after ``__init__``)."""
    import threading

    def go() -> None:
        import ray

        from agents.runtime import COORDINATOR, NAMESPACE

        try:
            handle = ray.get_actor(COORDINATOR, namespace=NAMESPACE)
            getattr(handle, method).remote()
        except Exception as e:  # the next orchestrate resumes it instead
            log.warning("coordinator.self_call_failed", method=method, error=f"{type(e).__name__}: {e}")

    threading.Thread(target=go, name="coordinator-resume", daemon=True).start()


async def _ray_call(name: str, method: str, *args: Any) -> Any:
    import ray

    handle = ray.get_actor(name, namespace="swarm")
    return await getattr(handle, method).remote(*args)
