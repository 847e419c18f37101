"""The migration-coordinator: decides. It hands shards to data-migrators, has them drain the live changes, builds
the index, has the validators judge, completes, then keeps following the table.

A plain class whose async ``run`` drives the migration; :mod:`agents.actors` wraps it with ``ray.remote`` as the
named, detached ``coordinator`` actor (async, so ``status``-type calls interleave with the run). Workers are
reached through a ``call(name, method, *args) -> awaitable`` function: Ray actor handles in the swarm, plain
objects on threads in tests of the logic.

The database is the source of truth. A coordinator restarted by Ray resumes by itself (:meth:`resume`); an
``orchestrate`` run again resumes too. Shards left ``running`` go back to ``pending``; their old owners are fenced
by the shard's attempt number.

What ends a run (the states of ``swarm.migrations``):

* ``completed``: the backfill is done and the application's changes are caught up with (the queue empty, or at
  most ``swarm.settle_rows`` rows / the oldest younger than ``swarm.settle_seconds`` while the application keeps
  writing); the coordinator then follows the table (:mod:`agents.follow`).
* ``paused``: a transient fault (every migrator gone for ``swarm.worker_timeout_s``, the database unreachable
  beyond ``swarm.db_retry_s``, a shard failing ``swarm.max_attempts`` times). Every vector is kept. The first two
  resume by themselves when what was missing answers again; all of them resume with ``orchestrate``.
* ``rolled_back``: only a failed quality gate (or an operator's ``rollback``) drops the new column.
* ``failed``: an unexpected error, or the table changed under the swarm; the column stays behind a guard
  (:func:`swarm.migration.rollback.retire`) and the reason is recorded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from agents.cache import Entry, SharedCache
from agents.lag import LagMeter
from agents.outage import DatabaseDown, db_call
from agents.rounds import ValidationRounds
from swarm import migration as mig
from swarm.core.config import Config
from swarm.core.errors import DatabaseError
from swarm.core.log import configure, get_logger
from swarm.migration.index import IndexBuildCancelled
from swarm.store.db import Database, ensure_vector

log = get_logger()

Call = Callable[..., Awaitable[Any]]


class WorkerGone(Exception):
    """The named agent no longer exists (killed for good, not restarted by Ray)."""


def _is_worker_death(e: BaseException) -> bool:
    if isinstance(e, WorkerGone):
        return True
    try:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        return isinstance(e, (RayActorError, ActorDiedError, ActorUnavailableError))
    except ImportError:  # pragma: no cover
        return False


@dataclass(frozen=True)
class Pause:
    """Why the work stopped, and whether the coordinator resumes by itself when the cause goes away."""

    reason: str
    waits_for: str | None = None  # "migrators": resumes when a data-migrator answers; None: orchestrate resumes
    rollback: bool = False  # a validation round failed during the backfill: roll back instead of pausing


class Coordinator:
    """Runs migrations for the swarm it belongs to."""

    kind = "migration-coordinator"

    def __init__(self, payload: dict[str, Any], call: Call | None = None) -> None:
        configure(json=True, actor="coordinator")
        self.cfg = Config.from_payload(payload)
        self.dsn: str = payload["dsn"]
        s = self.cfg.swarm
        self.db = Database(self.dsn, application_name="swarm:coordinator", retry_s=s.db_retry_s)
        self._call = call or _ray_call
        self._task: asyncio.Task[dict[str, Any]] | None = None
        self._mid: int | None = None
        self._workers: dict[str, str] = {}
        self._follow: asyncio.Task[None] | None = None
        self._followed: int | None = None
        self.cache = SharedCache(self.cfg.embedding.cache_size if self.cfg.embedding.shared_cache else 0)
        self.lag = LagMeter(settle_rows=s.settle_rows)
        self.waiting: str | None = None  # what a paused run waits for right now (shown by info())
        self.events: list[dict[str, Any]] = []
        self._lag_saved = 0.0
        self._behind_logged = 0.0
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

    def info(self) -> dict[str, Any]:
        from swarm.core.metrics import peak_rss_mb, rss_mb

        return {
            "running": self.running(),
            "following": self.following(),
            "waiting": self.waiting,
            "rss_mb": round(rss_mb(), 1),
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }

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
        follow its completed one). A migration paused for a reason only an operator can clear stays paused.
        Returns the migration resumed, if any."""
        from agents.runtime import list_agents

        for prefix, kind in (("data-migrator-", "data-migrator"), ("validator-", "validator")):
            for name in list_agents(prefix):
                self.register(name, kind)
        m = await self._db(lambda c: mig.latest(c, self.cfg), "latest")
        if m is None or (m.state in mig.TERMINAL and m.state != "completed"):
            return None
        if m.state == "completed" and (m.rehearsal or m.phase == "decommissioned_unfollowed"):
            return None
        if m.state == mig.PAUSED and not await self._db(lambda c: _auto_resumes(c, m.id), "pause_kind"):
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
        return self._followed if self._follow is not None and not self._follow.done() else None

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
        return await db_call(self.db, fn, what)

    async def run(self, mid: int) -> dict[str, Any]:
        """Run migration ``mid`` until it completes, rolls back, fails or pauses for an operator. Through a
        database outage it waits, then resumes from the checkpoints; while paused for its migrators it waits
        for them."""
        while True:
            try:
                result = await self._run_once(mid)
            except DatabaseDown as e:
                await self._wait_for_database(mid, str(e))
                continue
            if result.get("resume"):
                continue
            return result

    async def _run_once(self, mid: int) -> dict[str, Any]:
        m: mig.Migration = await self._db(lambda c: mig.load(c, mid), "load")
        if m.state == "completed" and not m.rehearsal:
            return await self._catch_up(m)
        if m.state in mig.TERMINAL:
            return {"state": m.state}
        why = await self._db(lambda c: mig.verify_resumable(c, m), "verify")
        if why:
            return await self._retire(m, f"cannot resume: {why}")
        log.info("migration.run", migration=mid, state=m.state)
        try:

            def begin(conn: psycopg.Connection) -> None:
                with conn.transaction():
                    if m.state == mig.PAUSED:  # resumed: shards that failed get their attempts back
                        mig.reopen(conn, mid)
                    mig.set_state(conn, mid, "running", phase="backfill", clear_reason=True)
                    mig.requeue_running(conn, mid)

            await self._db(begin, "begin")
            pause = await self._backfill(m)
            if pause and pause.rollback:
                return await self._fail(m, pause.reason)
            if pause:
                return await self._pause(m, pause)
            await self._vacuum(m, "after_backfill")
            await self._db(lambda c: mig.set_state(c, mid, "running", phase="changes"), "state")
            pause = await self._settle(m)
            if pause:
                return await self._pause(m, pause)
            if m.rehearsal:
                return await self._finish_rehearsal(m)
            await self._db(lambda c: mig.set_state(c, mid, "running", phase="index"), "state")
            server = await self._db(ensure_vector, "server")
            try:
                await asyncio.to_thread(mig.build_index, self.db, m, self.cfg.swarm.index, server)
            except IndexBuildCancelled:
                return {"state": (await self._db(lambda c: mig.load(c, mid), "load")).state, "reason": "rolled back"}
            pause = await self._settle(m)  # rows changed while the index was built
            if pause:
                return await self._pause(m, pause)
            after_build = await self.after_backfill(m)
            if after_build is not None:
                return after_build
            return await self._complete(m)
        except (asyncio.CancelledError, DatabaseDown):
            raise
        except Exception as e:
            log.exception("migration.error", migration=mid)
            return await self._retire(m, f"{type(e).__name__}: {e}")

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

    # -- the backfill --------------------------------------------------------------------------------------
    async def _await_worker(self, worker: str, timeout: float) -> str:
        """Wait until a worker answers again (Ray restarts a dead migrator and reloads its model)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self._call(worker, "ping")
                return worker
            except WorkerGone:
                raise  # killed for good: Ray will not bring it back
            except Exception as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{worker} did not come back within {timeout:.0f} s") from e
                await asyncio.sleep(1.0)

    async def _backfill(self, m: mig.Migration) -> Pause | None:
        """Hand pending shards to idle migrators until none is left. Returns why the work paused, or None.

        Migrators that register meanwhile (``spawn``, a respawned swarm) take shards too; one that vanished is
        waited for ``swarm.worker_timeout_s``, then dropped from the registry.
        """
        mid = m.id
        s = self.cfg.swarm
        if not self.workers():
            return Pause("no data-migrators in the swarm", waits_for="migrators")
        shards: dict[asyncio.Future[Any], tuple[str, int, int]] = {}
        returning: dict[asyncio.Future[Any], str] = {}  # workers being restarted by Ray
        since_vacuum = 0
        vacuum: asyncio.Task[None] | None = None
        lost_since: float | None = None
        while True:
            busy = {w for w, _, _ in shards.values()} | set(returning.values())
            for worker in [w for w in self.workers() if w not in busy]:

                def claim_for(c: psycopg.Connection, w: str = worker) -> tuple[int, int] | None:
                    return mig.claim_shard(c, mid, w)

                claim = await self._db(claim_for, "claim")
                if claim is None:
                    break
                shard_id, attempt = claim
                fut: asyncio.Future[Any] = asyncio.ensure_future(
                    self._call(worker, "run_shard", mid, shard_id, attempt, len(self.workers()))
                )
                shards[fut] = (worker, shard_id, attempt)
                log.info("shard.assigned", migration=mid, shard=shard_id, worker=worker, attempt=attempt)
            if not shards:
                pending = (
                    await self._db(
                        lambda c: c.execute(
                            "SELECT count(*) FROM swarm.shards WHERE migration_id = %s AND state = 'pending'", [mid]
                        ).fetchone(),
                        "pending",
                    )
                )[0]  # count(*): always one row
                if not pending:
                    break
                if not returning:
                    if self.workers():  # a pending shard was locked by a claim under way: look again
                        await asyncio.sleep(0.2)
                        continue
                    # Shards wait and no migrator is there to take them: wait for one to register, then pause.
                    lost_since = lost_since or time.monotonic()
                    if time.monotonic() - lost_since > s.worker_timeout_s:
                        return Pause(
                            f"no data-migrator answered for {s.worker_timeout_s:.0f} s; {pending} shards wait "
                            "(the migration resumes by itself when migrators answer again, or with `orchestrate`)",
                            waits_for="migrators",
                        )
                    await asyncio.sleep(min(1.0, s.resume_poll_s))
                    continue
            lost_since = None
            # Validation rounds while the backfill runs (agents/rounds.py): a round with strong evidence against
            # the new model stops the backfill here, and the migration rolls back (the one pause that drops data).
            stop = await self.rounds.maybe_round(m)
            if stop is not None:
                for f in [*shards, *returning]:
                    f.cancel()
                return Pause(stop, rollback=True)
            done, _ = await asyncio.wait(
                [*shards, *returning], timeout=self.rounds.tick, return_when=asyncio.FIRST_COMPLETED
            )
            for fut in done:
                if fut in returning:
                    worker = returning.pop(fut)
                    if fut.exception() is not None:
                        log.error("worker.lost", worker=worker, error=str(fut.exception()))
                        self.unregister(worker)
                    continue
                worker, shard_id, attempt = shards.pop(fut)
                err = fut.exception()
                if err is None:
                    since_vacuum += int((fut.result() or {}).get("rows", 0))
                    if (
                        s.vacuum_every_rows
                        and since_vacuum >= s.vacuum_every_rows
                        and (vacuum is None or vacuum.done())
                    ):
                        since_vacuum = 0
                        vacuum = asyncio.ensure_future(self._vacuum(m, "during_backfill"))
                    continue
                died = _is_worker_death(err)
                reason = "worker died" if died else f"{type(err).__name__}: {str(err).splitlines()[-1][:500]}"

                def release(c: psycopg.Connection, sh: int = shard_id, a: int = attempt, r: str = reason) -> str:
                    return mig.release_shard(c, mid, sh, a, error=r, max_attempts=s.max_attempts)

                state = await self._db(release, "release")
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
                    returning[asyncio.ensure_future(self._await_worker(worker, s.worker_timeout_s))] = worker
                if state == "failed":
                    for f in [*shards, *returning]:
                        f.cancel()
                    return Pause(
                        f"shard {shard_id} failed {s.max_attempts} times: {reason}; every vector is kept, "
                        "`orchestrate` resumes it"
                    )
        for f in returning:
            f.cancel()
        if vacuum is not None:
            await vacuum
        states = await self._db(
            lambda c: c.execute(
                "SELECT state, count(*) FROM swarm.shards WHERE migration_id = %s GROUP BY state", [mid]
            ).fetchall(),
            "states",
        )
        left = {st: n for st, n in states if st != "done"}
        return Pause(f"shards not done: {left}") if left else None

    async def _vacuum(self, m: mig.Migration, when: str) -> None:
        """``VACUUM (ANALYZE)`` the table (the backfill rewrote its rows), and record its sizes."""
        from swarm.migration.plan import table_sizes

        t0 = time.monotonic()
        try:
            await asyncio.to_thread(_vacuum_table, self.dsn, m)
        except psycopg.Error as e:  # maintenance is no reason to stop a migration: say so and go on
            log.warning("vacuum.failed", migration=m.id, error=f"{type(e).__name__}: {e}")
        sizes = await self._db(lambda c: table_sizes(c, m.target), "sizes")
        sizes["vacuum_seconds"] = round(time.monotonic() - t0, 2)
        await self._db(lambda c: _record_sizes(c, m.id, when, sizes), "record_sizes")
        log.info("vacuum.done", migration=m.id, when=when, **sizes)

    # -- the change queue ----------------------------------------------------------------------------------
    async def drain_round(self, m: mig.Migration) -> int | None:
        """Every migrator drains one batch of the queue at once. Returns the entries done, or None when no
        migrator answered (all of them gone)."""
        workers = self.workers()
        if not workers:
            return None
        results = await asyncio.gather(
            *(self._call(w, "drain_changes", m.id, None, len(workers)) for w in workers), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        done = sum(r for r in results if isinstance(r, int))
        for w, r in zip(workers, results, strict=True):
            if isinstance(r, WorkerGone):
                self.unregister(w)
        if errors and len(errors) == len(results):
            if all(_is_worker_death(e) for e in errors):
                return None
            raise errors[0]
        return done

    async def measure_lag(self, m: mig.Migration, drained: int) -> Any:
        queued, oldest = await self._db(lambda c: mig.queue_lag(c, m.id), "lag")
        lag = self.lag.sample(queued, oldest, drained)
        now = time.monotonic()
        if now - self._lag_saved >= 1.0:
            self._lag_saved = now
            await self._db(lambda c: mig.record_lag(c, m.id, lag.as_dict()), "record_lag")
        if lag.falling_behind and now - self._behind_logged > 30:
            self._behind_logged = now
            log.warning(
                "follow.falling_behind",
                migration=m.id,
                queued=lag.queued,
                oldest_s=round(lag.oldest_seconds or 0, 1),
                rows_per_second_needed=round(lag.arrival_rows_per_second or 0, 1),
                rows_per_second_embedded=round(lag.embed_rows_per_second or 0, 1),
                hint="the application changes rows faster than the swarm embeds them: add migrators "
                "(`spawn --type data-migrator`) or raise swarm.max_rows_per_second",
            )
        return lag

    async def _settle(self, m: mig.Migration, budget: float | None = None) -> Pause | None:
        """Drain the queue until the application's changes are caught up with: the queue empty, or (while the
        application keeps writing) small or fresh enough for ``settle_seconds``. Never gives up on a busy table:
        it says when it falls behind, and goes on."""
        s = self.cfg.swarm
        started = time.monotonic()
        gone_since: float | None = None
        await self._db(lambda c: mig.enqueue_missing(c, m), "enqueue_missing")
        while True:
            done = await self.drain_round(m)
            if done is None:
                gone_since = gone_since or time.monotonic()
                if time.monotonic() - gone_since > s.worker_timeout_s:
                    return Pause(
                        f"no data-migrator answered for {s.worker_timeout_s:.0f} s while changes wait",
                        waits_for="migrators",
                    )
                await asyncio.sleep(1.0)
                continue
            gone_since = None
            if not done:
                # Nothing claimable: rows with no vector and no queue entry (inserted while no trigger was there,
                # or skipped) are queued now; entries locked by another drain are waited for.
                await self._db(lambda c: mig.enqueue_missing(c, m), "enqueue_missing")
            lag = await self.measure_lag(m, done)
            if lag.queued == 0:
                return None
            elapsed = time.monotonic() - started
            settled = lag.queued <= s.settle_rows or (lag.oldest_seconds or 0) <= s.settle_seconds
            if settled and elapsed >= s.settle_seconds:
                return None
            if budget is not None and elapsed >= budget:
                return None
            if not done:
                await asyncio.sleep(0.2)

    # -- the ends ------------------------------------------------------------------------------------------
    async def _catch_up(self, m: mig.Migration) -> dict[str, Any]:
        """A completed migration run again: embed what the application changed since (the sync trigger queued
        it and nulled the stale vectors), then complete again. Like a vectorizer worker's next pass."""
        why = await self._db(lambda c: mig.verify_resumable(c, m), "verify")
        if why:
            return await self._retire(m, f"cannot resume: {why}")
        await self._db(lambda c: mig.set_state(c, m.id, "running", phase="changes"), "state")
        return await self._complete(m)

    async def _complete(self, m: mig.Migration) -> dict[str, Any]:
        # Rows the application changed while validation and rollout ran: their vectors before the counts.
        if not m.rehearsal:
            pause = await self._settle(m)
            if pause:
                return await self._pause(m, pause)
        checks = {} if m.rehearsal else await self._db(lambda c: mig.verify_legacy(c, m), "verify_legacy")
        from swarm.migration.plan import table_sizes

        sizes = await self._db(lambda c: table_sizes(c, m.target), "sizes")

        def go(conn: psycopg.Connection) -> dict[str, Any]:
            with conn.transaction():
                total, done, failed = mig.finish_counts(conn, m)
                conn.execute(
                    "UPDATE swarm.migrations SET rows_total = %s, rows_done = %s, rows_failed = %s WHERE id = %s",
                    [total, done, failed, m.id],
                )
                _record_sizes(conn, m.id, "completed", sizes)
                mig.set_state(conn, m.id, "completed", phase="done")
                mig.event(conn, m.id, "completed", rows_total=total, rows_done=done, rows_failed=failed, **checks)
                return {"state": "completed", "rows_total": total, "rows_done": done, "rows_failed": failed}

        result = await self._db(go, "complete")
        log.info("migration.completed", migration=m.id, **{k: v for k, v in result.items() if k != "state"})
        if not m.rehearsal and self.cfg.swarm.follow_interval_s > 0:
            from agents.follow import follow

            # Like a vectorizer worker: the sync trigger goes on queueing the application's writes, and the
            # swarm goes on embedding them, until rollback, decommission or shutdown.
            self._followed = m.id
            self._follow = asyncio.get_running_loop().create_task(follow(self, m))
        return result

    async def _pause(self, m: mig.Migration, pause: Pause) -> dict[str, Any]:
        """Record ``paused`` with the reason (every vector stays); wait for the migrators when that is what is
        missing, then resume from the checkpoints."""
        log.warning("migration.paused", migration=m.id, reason=pause.reason, waits_for=pause.waits_for)

        def go(conn: psycopg.Connection) -> None:
            with conn.transaction():
                mig.requeue_running(conn, m.id)
                mig.set_state(conn, m.id, mig.PAUSED, reason=pause.reason)
                mig.event(conn, m.id, "paused", reason=pause.reason, waits_for=pause.waits_for)

        await self._db(go, "pause")
        if pause.waits_for != "migrators":
            return {"state": mig.PAUSED, "reason": pause.reason}
        self.waiting = "a data-migrator to answer"
        try:
            while not await self._any_migrator_answers():
                await asyncio.sleep(self.cfg.swarm.resume_poll_s)
                state = (await self._db(lambda c: mig.load(c, m.id), "load")).state
                if state != mig.PAUSED:  # rolled back or resumed by someone else meanwhile
                    return {"state": state, "reason": pause.reason}
        finally:
            self.waiting = None
        log.warning("migration.resuming", migration=m.id, after=pause.reason)
        return {"resume": True}

    async def _any_migrator_answers(self) -> bool:
        for w in self.workers():
            try:
                await asyncio.wait_for(self._call(w, "ping"), timeout=10)
                return True
            except WorkerGone:
                self.unregister(w)
            except Exception:
                continue
        return False

    async def _wait_for_database(self, mid: int, why: str) -> None:
        """The database is away: wait (every ``resume_poll_s``) until it answers, record the pause, resume."""
        log.warning("migration.paused", migration=mid, reason=f"database unreachable: {why}")
        self.waiting = f"the database ({why})"
        probe = Database(self.dsn, application_name="swarm:coordinator", max_attempts=1)
        try:
            while True:
                await asyncio.sleep(self.cfg.swarm.resume_poll_s)
                try:
                    await asyncio.to_thread(probe.run, lambda c: c.execute("SELECT 1"), what="probe")
                    break
                except (psycopg.Error, DatabaseError):
                    continue
        finally:
            probe.close()
            self.waiting = None
        reason = f"the database was unreachable beyond swarm.db_retry_s ({why}); resumed when it answered"

        def note(conn: psycopg.Connection) -> None:
            # On record as an event only: the run goes on at once, and a watcher must not take it for a pause.
            mig.event(conn, mid, "paused", reason=reason, waits_for="database")

        await self._db(note, "pause_note")
        log.warning("migration.resuming", migration=mid, after="database outage")

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
        """A failed quality gate: roll back (the new column goes)."""
        log.error("migration.failing", migration=m.id, reason=reason)
        result = await asyncio.to_thread(mig.rollback, self.db, m, self.cfg, reason=reason)
        return {"state": "rolled_back", **result}

    async def _retire(self, m: mig.Migration, reason: str) -> dict[str, Any]:
        """An unexpected end: record ``failed`` with the reason; the vectors stay behind a guard."""
        return await asyncio.to_thread(mig.retire, self.db, m, self.cfg, reason=reason)


def _vacuum_table(dsn: str, m: mig.Migration) -> None:
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True, application_name=f"swarm:vacuum:{m.id}") as conn:
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(m.target.t))


def _record_sizes(conn: psycopg.Connection, mid: int, when: str, sizes: dict[str, Any]) -> None:
    import json

    conn.execute(
        "UPDATE swarm.migrations SET sizes = coalesce(sizes, '{}'::jsonb) || jsonb_build_object(%s::text, %s::jsonb) "
        "WHERE id = %s",
        [when, json.dumps(sizes), mid],
    )


def _auto_resumes(conn: psycopg.Connection, mid: int) -> bool:
    """Whether the migration's last pause waits for something that comes back by itself (migrators)."""
    row = conn.execute(
        "SELECT detail ->> 'waits_for' FROM swarm.events WHERE migration_id = %s AND kind = 'paused' "
        "ORDER BY id DESC LIMIT 1",
        [mid],
    ).fetchone()
    return bool(row and row[0] in ("migrators", "database"))


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

    try:
        handle = ray.get_actor(name, namespace="swarm")
    except ValueError:
        raise WorkerGone(f"{name} does not exist") from None
    return await getattr(handle, method).remote(*args)
