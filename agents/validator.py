"""The validator: searches a share of a round's queries on both arms, four ways, and rolls the migration out.

A plain class; :mod:`agents.actors` wraps it as the named, detached ``validator-N`` actor. Both embedders (the
legacy model that filled the legacy column, and the new model with its query prefix) are built by
:func:`model.factory.embedder_for` on first use and kept, so later rounds and the auto rollout reuse them.

``judge(mid, queries, spec)`` embeds each query with both models and searches each arm through its index with
the application's settings (``spec``: the new column with ``[swarm].ef_search``/``probes``, the legacy one with
``[legacy].ef_search``/``probes`` or the server's) and exactly (no index). During the backfill both arms
search only rows that already have a new vector. It returns the raw results; the round that asked
(:mod:`agents.rounds`, run by the coordinator over every validator) computes the figures and the verdict once.

``validate(mid)`` is one whole round in this process (``python -m swarm validate``).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

from swarm import migration as mig
from swarm.core.config import Config
from swarm.core.errors import SwarmError
from swarm.core.log import configure, get_logger
from swarm.store.db import Database

log = get_logger()


class Validator:
    kind = "validator"

    def __init__(self, name: str, payload: dict[str, Any]) -> None:
        configure(json=True, actor=name)
        self.name = name
        self.cfg = Config.from_payload(payload)
        self.dsn: str = payload["dsn"]
        self.db = Database(self.dsn, application_name=f"swarm:{name}")
        self._router: Any = None
        self._embedders: dict[str, Any] = {}
        self._load_lock = threading.Lock()
        self.reports: list[dict[str, Any]] = []
        self.judged = 0

    def ping(self) -> str:
        return self.name

    def close(self) -> None:
        """Close this validator's connections (its own and its router's) and its models."""
        self.db.close()
        if self._router is not None:
            self._router.close()
        for e in self._embedders.values():
            e.close()
        self._embedders.clear()

    def embedder(self, arm: str) -> Any:
        """The arm's query embedder, loaded once. One llama.cpp thread: queries are short, and during the
        backfill the validator shares the machine with the migrators."""
        with self._load_lock:
            if arm not in self._embedders:
                from model.factory import embedder_for

                self._embedders[arm] = embedder_for(self.cfg, "legacy" if arm == "legacy" else "new", n_threads=1)
            return self._embedders[arm]

    def warm(self) -> list[str]:
        """Load both models now (the coordinator asks at the start of the backfill, so the first round does not
        pay for it); a model that fails to load is left for the round to report."""
        loaded = []
        for arm in ("legacy", "new"):
            try:
                self.embedder(arm)
                loaded.append(arm)
            except Exception as e:  # reported by the round that needs it, as that arm's error
                log.warning("validator.warm_failed", arm=arm, error=f"{type(e).__name__}: {e}")
        return loaded

    @property
    def router(self) -> Any:
        """One router for rollout replays (recorded as ``replay``), sharing this validator's models."""
        if self._router is None:
            from swarm.serving.router import Router

            self._router = Router(
                self.cfg,
                self.dsn,
                source="replay",
                legacy_embedder=self._embedder_or_none("legacy"),
                new_embedder=self._embedder_or_none("new"),
            )
        return self._router

    def _embedder_or_none(self, arm: str) -> Any:
        try:
            return self.embedder(arm)
        except Exception:
            return None  # the router loads it itself, and reports its error per search

    # -- judging -------------------------------------------------------------------------------------------
    def judge(self, mid: int, queries: list[dict[str, Any]], spec: dict[str, Any]) -> list[dict[str, Any]]:
        """Search each query on both arms, through the index and exactly; one dict per query, keyed
        ``legacy_exact``, ``legacy_ann``, ``new_exact``, ``new_ann`` (a :class:`~swarm.quality.Hit` each).

        Errors go in the Hit (an arm that cannot embed or search answers nothing, and the round is fail-closed
        about it), never raised.
        """
        from swarm.quality import Hit
        from swarm.store.search import AnnSettings

        m = self.db.run(lambda c: mig.load(c, mid), what="load")
        t = m.target
        k = int(spec["k"])
        require = t.new_column if spec.get("partial") else None
        texts = [q["text"] for q in queries]
        columns: dict[str, tuple[str, str | None, int | None]] = {
            "legacy": (t.legacy_column, spec.get("legacy_type"), spec.get("legacy_dim")),
            "new": (t.new_column, m.column_type, m.dimension),
        }
        arms: dict[str, dict[str, Any]] = {}
        for arm in ("legacy", "new"):
            column, ctype, dim = columns[arm]
            entry: dict[str, Any] = {"vectors": None, "embed_ms": 0.0, "error": None, "query": None}
            entry["ann"] = AnnSettings(**spec["ann"][arm])
            try:
                if ctype is None or dim is None:
                    raise SwarmError(spec.get("legacy_error") or f"{t.table}.{column} is not a vector column")
                t0 = time.perf_counter()
                entry["vectors"] = self.embedder(arm).embed(texts, query=True) if texts else []
                entry["embed_ms"] = (time.perf_counter() - t0) * 1000 / max(1, len(texts))
                entry["query"] = t.search(column, ctype, dim, require=require)
            except Exception as e:  # the model, or the column: this arm answers nothing
                entry["error"] = _short(e)
            arms[arm] = entry
        out: list[dict[str, Any]] = []
        for i in range(len(queries)):
            hits = {
                f"{arm}_{mode}": Hit(embed_ms=arms[arm]["embed_ms"], error=arms[arm]["error"])
                for arm in ("legacy", "new")
                for mode in ("exact", "ann")
            }
            todo = [(key, arms[key.split("_")[0]], key.endswith("_exact")) for key in hits if hits[key].error is None]
            try:
                self.db.run(_paired_searches(todo, i, k, hits), what="judge")
            except (psycopg.Error, SwarmError, ValueError) as e:  # retries spent: every search of this query
                for key, _, _ in todo:
                    hits[key].error = _short(e)
            out.append({key: h.as_dict() for key, h in hits.items()})
        self.judged += len(queries)
        return out

    # -- a whole round in this process ---------------------------------------------------------------------
    def validate(self, mid: int) -> dict[str, Any]:
        """One validation round of migration ``mid`` on ``validation.sample_queries`` queries, judged by this
        validator alone; stored and returned (``verdict``, ``failures``, the figures)."""
        from agents.rounds import conclude, plan_round

        started = time.monotonic()
        m = self.db.run(lambda c: mig.load(c, mid), what="load")
        plan = plan_round(self.db, self.cfg, m, kind="manual", n_queries=self.cfg.validation.sample_queries)
        results = self.judge(mid, plan.query_dicts(), plan.spec) if plan.queries else []
        report = conclude(self.db, self.cfg, m, plan, results, validators=[self.name], started=started)
        self.reports.append(report)
        return report

    # -- rollout -------------------------------------------------------------------------------------------
    def rollout(self, mid: int) -> dict[str, Any]:
        """Step the share through ``[rollout].steps`` (see :func:`swarm.serving.rollout.auto`)."""
        from swarm.quality import sample
        from swarm.serving import rollout

        m = self.db.run(lambda c: mig.load(c, mid), what="load")
        try:
            queries = sample(self._queries(), self.cfg.validation.sample_queries, seed=mid)
        except SwarmError as e:
            return {"failures": [f"query set: {e}"], "percent": float(m.rollout_percent), "steps": []}
        return rollout.auto(self.cfg, self.db, m, self.router, queries)

    def _queries(self) -> list[Any]:
        from agents.rounds import load_query_set

        return load_query_set(self.db, self.cfg)

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "judged": self.judged,
            "reports": len(self.reports),
            "last": self.reports[-1] if self.reports else None,
        }


def _paired_searches(todo: list[tuple[str, dict[str, Any], bool]], i: int, k: int, hits: dict[str, Any]) -> Any:
    """Query ``i``'s searches (both arms, through the index and exactly) as one function of the connection.

    They run in one read-only REPEATABLE READ transaction: during the backfill both arms are restricted to rows
    that have a new vector, and the migrators commit new ones all the time; one snapshot makes the four searches
    of a query see the same rows, so the pair compares the models on like with like. Each search runs in a
    savepoint that is rolled back (its ``SET LOCAL`` settings reach it alone; an error in it, a timeout say, is
    that search's and leaves the others); a lost connection is raised for :meth:`Database.run` to retry the
    whole query. The snapshot lasts one query's searches, not the round's: a round on a big table holds back
    no vacuum for long.
    """
    from swarm.store.search import run_search

    def go(conn: psycopg.Connection) -> None:
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            for key, arm, exact in todo:
                hit = hits[key]
                hit.error, hit.ids, hit.distances = None, [], []
                try:
                    with conn.transaction(force_rollback=True):
                        ann = None if exact else arm["ann"]
                        # Timed as the application's search is (its settings and the query), not the savepoints
                        # around it: p95 search latency is gated in the final round.
                        t1 = time.perf_counter()
                        rows = run_search(conn, arm["query"], arm["vectors"][i], k, ann, exact=exact)
                        hit.search_ms = (time.perf_counter() - t1) * 1000
                except (psycopg.Error, ValueError) as e:
                    if conn.broken:
                        raise
                    hit.error = _short(e)
                    continue
                hit.ids = [r[0] for r in rows]
                hit.distances = [float(r[1]) for r in rows]

    return go


def _short(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:500]
