"""Validation rounds: the validators judge the new model while the backfill runs, and once more after it.

The coordinator owns one :class:`ValidationRounds`. Its backfill loop calls :meth:`ValidationRounds.maybe_round`
at least every :attr:`~ValidationRounds.tick` seconds: each time another ``validation.every_percent`` of the
rows has been embedded, a round starts in the background (one at a time; a slow round merges thresholds) and
the migrators go on. A round

1. plans (:func:`plan_round`): counts the rows that have a new vector, keeps the queries whose answers are all
   among them (like with like: both arms will search only those rows), samples ``validation.round_queries``
   of them (``sample_queries`` for the final round), seeded by migration and round; reads each arm's ANN
   settings (``[swarm]`` for the new column, ``[legacy]`` or the server's for the legacy one) and indexes;
2. splits the sample across every registered validator, which search in parallel (:meth:`Validator.judge`);
3. merges their per-query results and computes the figures and the verdict once (:func:`conclude`,
   :func:`swarm.quality.evaluate`), and stores the round in ``swarm.events`` (kind ``validation``).

A round during the backfill whose verdict is FAIL (its interval wholly beyond the limit) makes
``maybe_round`` return the reason, and the coordinator rolls the migration back there, before the rest of the
table is paid for. INCONCLUSIVE rounds let the backfill go on. :meth:`ValidationRounds.final` runs the round
after the backfill, drain and index build; the coordinator then goes on (PASS), rolls back (FAIL) or, on
INCONCLUSIVE, completes with the rollout held at 0% (decommission is refused until a validation passes).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from agents.outage import db_call
from swarm import migration as mig
from swarm.core.config import Config
from swarm.core.errors import SwarmError
from swarm.core.log import get_logger
from swarm.quality import Hit, Query, evaluate, load_queries, queries_from_table, record, sample
from swarm.store.db import Database

log = get_logger()

KINDS = ("backfill", "final", "manual")


# ------------------------------------------------------------------------------------------------------------
# One round: plan, (judge), conclude
# ------------------------------------------------------------------------------------------------------------
def load_query_set(db: Database, cfg: Config) -> list[Query]:
    """``validation.queries``: a JSONL file, or ``table:<name>`` for a table with ``query`` (and optional
    ``relevant_ids``, ``slice``) columns."""
    src = cfg.validation.queries
    if src.startswith("table:"):
        return db.run(lambda c: queries_from_table(c, src.removeprefix("table:")), what="queries")
    return load_queries(cfg.path(src))


@dataclass
class RoundPlan:
    """What a round judges, fixed before any validator searches."""

    round: int
    kind: str
    rows_total: int
    rows_with_new_vector: int
    in_set: int
    judgeable: int
    queries: list[Query]
    spec: dict[str, Any]
    seed: list[int]
    problems: list[str] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        return self.rows_with_new_vector < self.rows_total

    @property
    def percent_embedded(self) -> float:
        return round(100.0 * self.rows_with_new_vector / self.rows_total, 2) if self.rows_total else 100.0

    def query_dicts(self) -> list[dict[str, Any]]:
        return [{"text": q.text, "relevant": sorted(q.relevant), "slice": q.slice} for q in self.queries]


def _with_vector(m: mig.Migration) -> sql.Composed:
    t = m.target
    return sql.SQL("SELECT {id}::text FROM {t} WHERE {id}::text = ANY(%s) AND {new} IS NOT NULL").format(
        id=t.id, t=t.t, new=t.new
    )


def plan_round(db: Database, cfg: Config, m: mig.Migration, *, kind: str, n_queries: int) -> RoundPlan:
    """Which queries a round judges and how each arm is searched; reads only."""
    from swarm.store.search import AnnSettings, column_indexes

    if kind not in KINDS:
        raise ValueError(f"round kind {kind!r}: expected one of {KINDS}")
    v = cfg.validation
    t = m.target
    problems: list[str] = []
    round_no = db.run(lambda c: record.next_round(c, m.id), what="round_no")
    seed = [int(m.id), round_no]
    total, with_new = db.run(lambda c: (_count(c, t.count_rows()), _count(c, t.count_with_vector())), what="coverage")
    try:
        query_set = load_query_set(db, cfg)
    except SwarmError as e:
        problems.append(f"query set: {e}")
        query_set = []
    judgeable = query_set
    if with_new < total and any(q.labelled for q in query_set):
        # Only queries whose answers are already migrated can be judged on the rows both arms will search.
        ids = sorted({r for q in query_set for r in q.relevant})
        have = {r[0] for r in db.run(lambda c: c.execute(_with_vector(m), [ids]).fetchall(), what="judgeable")}
        judgeable = [q for q in query_set if not q.labelled or q.relevant <= have]
    queries = sample(judgeable, n_queries, seed=int(m.id) * 100_003 + round_no)
    spec: dict[str, Any] = {"k": v.k, "partial": with_new < total, "legacy_type": None, "legacy_dim": None}
    try:
        info = db.run(lambda c: mig.inspect_table(c, cfg), what="inspect")
        if info.legacy_type in ("vector", "halfvec") and info.legacy_dim:
            spec["legacy_type"], spec["legacy_dim"] = info.legacy_type, int(info.legacy_dim)
        else:
            spec["legacy_error"] = f"{t.table}.{t.legacy_column} is {info.legacy_type}, not a vector column"
    except SwarmError as e:  # the legacy column is gone or unreadable: that arm answers nothing
        spec["legacy_error"] = f"{type(e).__name__}: {e}"
    legacy_ann = db.run(lambda c: AnnSettings.for_legacy(cfg, c), what="legacy_settings")
    spec["ann"] = {"legacy": legacy_ann.as_dict(), "new": AnnSettings.of(cfg).as_dict()}
    spec["indexes"] = {
        "legacy": db.run(lambda c: column_indexes(c, t.table, t.legacy_column), what="indexes"),
        "new": db.run(lambda c: column_indexes(c, t.table, t.new_column), what="indexes"),
    }
    return RoundPlan(round_no, kind, total, with_new, len(query_set), len(judgeable), queries, spec, seed, problems)


def conclude(
    db: Database,
    cfg: Config,
    m: mig.Migration,
    plan: RoundPlan,
    results: list[dict[str, Any]],
    *,
    validators: list[str],
    started: float,
    store: bool = True,
) -> dict[str, Any]:
    """The round's figures and verdict from the merged per-query results; stored in ``swarm.events``."""
    v = cfg.validation
    hits: dict[str, list[Hit]] = {f"{a}_{md}": [] for a in ("legacy", "new") for md in ("exact", "ann")}
    for r in results:
        for key in hits:
            hits[key].append(Hit.from_dict(r[key]))
    report = evaluate(plan.queries, hits, v, seed=plan.seed, final=plan.kind != "backfill")
    if plan.problems:
        # A query set that cannot be read decides nothing: fail closed.
        report["inconclusive"] = plan.problems + report["inconclusive"]
        report["failures"] = plan.problems + report["failures"]
        if report["verdict"] == "PASS":
            report["verdict"] = "INCONCLUSIVE"
    all_hits = [h for hs in hits.values() for h in hs]
    report.update(
        {
            "round": plan.round,
            "stage": plan.kind,
            "migration": m.id,
            "partial": plan.partial,
            "rows_total": plan.rows_total,
            "rows_with_new_vector": plan.rows_with_new_vector,
            "percent_embedded": plan.percent_embedded,
            "query_set": {"queries": plan.in_set, "judgeable": plan.judgeable, "sampled": len(plan.queries)},
            "settings": plan.spec["ann"],
            "indexes": plan.spec["indexes"],
            "validators": validators,
            "legacy_model": cfg.legacy.model,
            "new_model": m.model_id,
            "gates": v.model_dump(),
            "seed": plan.seed,
            "cost": {
                "seconds": round(time.monotonic() - started, 2),
                "searches": sum(1 for h in all_hits if h.error is None),
                "search_seconds": round(sum(h.search_ms for h in all_hits) / 1000, 2),
                # embed_ms is per query and arm, recorded on both of its searches: count it once
                "embed_seconds": round(sum(h.embed_ms for h in hits["legacy_exact"] + hits["new_exact"]) / 1000, 2),
            },
        }
    )
    report["seconds"] = report["cost"]["seconds"]
    if store:
        db.run(lambda c: mig.event(c, m.id, "validation", **report), what="round")
        if plan.kind == "manual" and report["verdict"] == "PASS":
            # A validation run by hand that passes lifts the hold an inconclusive final round left on record.
            db.run(
                lambda c: c.execute(
                    "UPDATE swarm.migrations SET reason = NULL, updated_at = now() "
                    "WHERE id = %s AND reason LIKE 'validation INCONCLUSIVE%%'",
                    [m.id],
                ),
                what="lift_hold",
            )
    log_fn = log.info if report["verdict"] == "PASS" else log.warning
    log_fn(
        "validation.round",
        migration=m.id,
        round=plan.round,
        stage=plan.kind,
        verdict=report["verdict"],
        percent_embedded=plan.percent_embedded,
        judged=report["judged"],
        mrr_drop=report["mrr_drop"],
        mrr_drop_ci=report["mrr_drop_ci"],
        seconds=report["seconds"],
        failures=report["failures"] or None,
    )
    return report


def _failed_query(error: str) -> dict[str, Any]:
    hit = Hit(error=error).as_dict()
    return {f"{a}_{md}": hit for a in ("legacy", "new") for md in ("exact", "ann")}


# ------------------------------------------------------------------------------------------------------------
# The coordinator's side
# ------------------------------------------------------------------------------------------------------------
class ValidationRounds:
    """The validation rounds of the coordinator's migration: during the backfill and after it."""

    #: How often (seconds) the backfill loop asks at most: progress is read from the shards' checkpoints.
    tick = 1.0

    def __init__(self, coordinator: Any) -> None:
        self.c = coordinator
        self.cfg: Config = coordinator.cfg
        # Its own connection: rounds plan and store from threads while the coordinator claims shards on its own.
        self.db = Database(
            coordinator.dsn, application_name="swarm:coordinator:validation", retry_s=self.cfg.swarm.db_retry_s
        )
        self._task: asyncio.Task[dict[str, Any] | None] | None = None
        self._next: dict[int, float] = {}
        self._warmed = False

    def close(self) -> None:
        self.db.close()

    def _validators(self) -> list[str]:
        return list(self.c.workers("validator"))

    async def _run_db(self, fn: Any, what: str) -> Any:
        return await db_call(self.db, fn, what)  # an outage pauses the run (DatabaseDown); it is no verdict

    async def maybe_round(self, m: mig.Migration) -> str | None:
        """Start a round when another ``every_percent`` of the rows is embedded; return why the backfill must
        stop (a round that FAILed), else None. Cheap: one small query per call."""
        every = self.cfg.validation.every_percent
        if every <= 0 or m.rehearsal or not self._validators():
            return None
        if self._task is not None and self._task.done():
            task, self._task = self._task, None
            report = _result(task)
            if report is not None and report["verdict"] == "FAIL":
                done, total = await self._run_db(lambda c: _progress(c, m.id), "progress")
                stopped = 100.0 * done / total if total else 0.0
                return (
                    f"validation failed during the backfill (round {report['round']}, with "
                    f"{report['percent_embedded']:.1f}% of the rows embedded; stopped at {stopped:.1f}%): "
                    + "; ".join(report["failures"])
                )
        if self._task is not None:
            return None  # one round at a time
        if not self._warmed:
            self._warmed = True
            for name in self._validators():
                asyncio.ensure_future(self._warm(name))
        done, total = await self._run_db(lambda c: _progress(c, m.id), "progress")
        if not total:
            return None
        if m.id not in self._next:
            last = await self._run_db(lambda c: record.last_backfill_percent(c, m.id), "last_round")
            self._next[m.id] = (math.floor(last / every) + 1) * every if last is not None else every
        percent = 100.0 * done / total
        if self._next[m.id] <= percent < 100.0:
            self._next[m.id] = (math.floor(percent / every) + 1) * every
            self._task = asyncio.ensure_future(self._round(m, "backfill"))
        return None

    async def final(self, m: mig.Migration) -> dict[str, Any]:
        """The round after the backfill (every row has its vector, the index is built): its report."""
        if self._task is not None:
            # A round still running from the backfill ends first, so the final one is the last on record.
            await asyncio.wait([self._task])
            self._task = None
        report = await self._round(m, "final")
        assert report is not None
        return report

    async def _warm(self, name: str) -> None:
        try:
            await self.c._call(name, "warm")
        except Exception as e:  # the round reports what does not work
            log.warning("validator.warm_failed", validator=name, error=f"{type(e).__name__}: {e}")

    async def _round(self, m: mig.Migration, kind: str) -> dict[str, Any] | None:
        started = time.monotonic()
        v = self.cfg.validation
        n = v.round_queries if kind == "backfill" else v.sample_queries
        plan = await asyncio.to_thread(plan_round, self.db, self.cfg, m, kind=kind, n_queries=n)
        validators = self._validators()
        results = await self._judge(m, plan, validators)
        if kind == "backfill":
            state = await self._run_db(lambda c: mig.load(c, m.id).state, "state")
            if state in mig.TERMINAL:
                return None  # the migration ended meanwhile (a shard failed, an operator rolled back)
        return await asyncio.to_thread(
            conclude, self.db, self.cfg, m, plan, results, validators=validators, started=started
        )

    async def _judge(self, m: mig.Migration, plan: RoundPlan, validators: list[str]) -> list[dict[str, Any]]:
        """The sample split across the validators, searched in parallel, merged back in the sample's order."""
        queries = plan.query_dicts()
        if not queries:
            return []
        if not validators:
            return [_failed_query("no validator in the swarm") for _ in queries]
        parts = [list(range(i, len(queries), len(validators))) for i in range(len(validators))]
        calls = [
            self.c._call(name, "judge", m.id, [queries[i] for i in idx], plan.spec)
            for name, idx in zip(validators, parts, strict=True)
            if idx
        ]
        answers = await asyncio.gather(*calls, return_exceptions=True)
        merged: list[dict[str, Any] | None] = [None] * len(queries)
        for name, idx, answer in zip(validators, [p for p in parts if p], answers, strict=True):
            if isinstance(answer, BaseException):
                # Its queries count as errors on both arms: fewer judged queries, never a silent pass.
                log.warning("validation.judge_failed", validator=name, error=f"{type(answer).__name__}: {answer}")
                answer = [_failed_query(f"{name}: {type(answer).__name__}") for _ in idx]
            for i, r in zip(idx, answer, strict=True):
                merged[i] = r
        return [r if r is not None else _failed_query("no answer") for r in merged]


def _result(task: asyncio.Task[dict[str, Any] | None]) -> dict[str, Any] | None:
    if task.cancelled():
        return None
    err = task.exception()
    if err is not None:
        log.warning("validation.round_error", error=f"{type(err).__name__}: {err}")
        return None
    return task.result()


def _progress(conn: psycopg.Connection, mid: int) -> tuple[int, int]:
    """(rows embedded, rows planned) from the shards' checkpoints (updated with every batch)."""
    row = conn.execute(
        "SELECT coalesce(sum(rows_done), 0), coalesce(sum(rows_planned), 0) FROM swarm.shards WHERE migration_id = %s",
        [mid],
    ).fetchone()
    assert row is not None  # an aggregate always returns its row
    return int(row[0]), int(row[1])


def _count(conn: psycopg.Connection, query: sql.Composed) -> int:
    row = conn.execute(query).fetchone()
    assert row is not None  # count(*) always returns its row
    return int(row[0])
