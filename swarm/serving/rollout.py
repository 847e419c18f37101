"""Gradual rollout: the share of queries the new column serves, set by hand or stepped automatically.

``set_percent`` writes ``swarm.migrations.rollout_percent`` (the router re-reads it within a second) and
records the change in ``swarm.events``. ``auto`` steps through ``[rollout].steps``; at each step it

1. sets the share,
2. replays ``queries_per_step`` queries from the query set through the router as traffic, paced over
   ``window_seconds`` (the demo has no real traffic; real searches recorded meanwhile count too), with sticky
   callers ``replay-0 .. replay-N``, so a caller on the new column stays there as the share grows,
3. evaluates the alert rules during the window,
4. checks the step's gates on the new arm from the search record (``swarm.query_rollup``, the searches made
   at this step's share since it began): error rate <= ``validation.max_error_rate``, p95 search latency <=
   ``validation.max_p95_latency_ms``.

A failed gate, or an ``error_rate`` alert firing, ends the rollout with failures (the caller rolls back).
Another alert firing holds the step for up to :data:`HOLD_WINDOWS` more windows of traffic; still firing after
that is a failure too. Steps already reached (a resumed rollout) are skipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from swarm import migration as mig
from swarm.core.errors import MigrationError, UsageError
from swarm.core.log import get_logger
from swarm.quality import Query
from swarm.serving.alerts import AlertEvaluator, Rule, load_rules
from swarm.store.db import Database
from swarm.store.pool import Runner

if TYPE_CHECKING:
    import psycopg

    from swarm.core.config import Config
    from swarm.serving.router import Router

log = get_logger()

HOLD_WINDOWS = 3
#: Record sources that are traffic (validation measures itself and is not recorded).
TRAFFIC = ("replay", "search", "serve")


def set_percent(db: Runner, m: mig.Migration, percent: float, *, reason: str | None = None) -> float:
    """Set the share of queries served by the new column; returns the previous share.

    Refused for a migration that was rolled back or failed, or whose new column is not complete yet (before
    validation), except for 0%, which is always allowed.
    """
    if not 0 <= percent <= 100:
        raise UsageError(f"--percent {percent:g}: must be between 0 and 100")
    if percent > 0:
        if m.rehearsal:
            raise UsageError(f"migration {m.id} is a rehearsal; its scratch column serves no queries")
        if m.state in ("rolled_back", "failed"):
            raise MigrationError(f"migration {m.id} is {m.state} ({m.reason}); nothing to roll out")
        if m.state not in ("validating", "completed") or m.phase == "decommissioned":
            raise MigrationError(
                f"migration {m.id} is {m.state} ({m.phase}); the new column serves queries only once the "
                "backfill is done and validated; wait for `status` to show validating or completed"
            )

    def go(conn: Any) -> float:
        with conn.transaction():
            prev = conn.execute(
                "SELECT rollout_percent FROM swarm.migrations WHERE id = %s FOR UPDATE", [m.id]
            ).fetchone()[0]
            conn.execute(
                "UPDATE swarm.migrations SET rollout_percent = %s, updated_at = now() WHERE id = %s",
                [percent, m.id],
            )
            mig.event(conn, m.id, "rollout", percent=percent, previous=prev, reason=reason)
            return float(prev)

    prev = db.run(go, what="set_percent")
    log.info("rollout.percent", migration=m.id, percent=percent, previous=prev, reason=reason)
    return prev


@dataclass
class StepReport:
    percent: int
    windows: int = 0
    replayed: int = 0
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "percent": self.percent,
            "windows": self.windows,
            "replayed": self.replayed,
            "arms": self.arms,
            "alerts": self.alerts,
            "failures": self.failures,
            "seconds": round(self.seconds, 2),
        }


def step_gates(arms: dict[str, dict[str, Any]], cfg: Config) -> list[str]:
    """The rollout gates on one step's recorded traffic (new arm)."""
    new = arms.get("new")
    if not new or not new["queries"]:
        return []
    v = cfg.validation
    failures = []
    if new["error_rate"] > v.max_error_rate:
        failures.append(
            f"error rate on the new column {new['error_rate']:.2%} ({new['errors']}/{new['queries']}) "
            f"> validation.max_error_rate {v.max_error_rate:.2%}"
        )
    p95 = new.get("p95_search_ms")
    if p95 is not None and p95 > v.max_p95_latency_ms:
        failures.append(
            f"p95 search latency on the new column {p95:.1f} ms > validation.max_p95_latency_ms "
            f"{v.max_p95_latency_ms:g}"
        )
    return failures


def auto(
    cfg: Config,
    db: Database,
    m: mig.Migration,
    router: Router,
    queries: list[Query],
    *,
    rules: list[Rule] | None = None,
    on_step: Any = None,
) -> dict[str, Any]:
    """Step through ``[rollout].steps``; returns ``{"failures": [...], "percent": final, "steps": [...]}``.

    It does not roll back by itself: on failures the coordinator (or ``python -m swarm rollout --auto``) does.
    """
    ro = cfg.rollout
    if not ro.use_new:
        log.warning("rollout.skipped", reason="USE_NOMIC_EMBEDDINGS=false")
        return {
            "failures": [],
            "percent": float(m.rollout_percent),
            "steps": [],
            "skipped": "USE_NOMIC_EMBEDDINGS=false sends every query to legacy; nothing to roll out",
        }
    if not queries:
        return {
            "failures": ["no queries to replay during the rollout (empty query set)"],
            "percent": float(m.rollout_percent),
            "steps": [],
        }
    rules = load_rules(cfg.path(ro.alerts)) if rules is None else rules
    evaluator = AlertEvaluator(
        rules,
        db,
        migration_id=m.id,
        webhook_url=ro.webhook_url,
        lookback_s=max(60.0, ro.window_seconds),
        sources=TRAFFIC,
    )
    start_percent = float(db.run(lambda c: mig.load(c, m.id), what="load").rollout_percent)
    steps: list[StepReport] = []
    percent = start_percent
    n_callers = ro.queries_per_step
    cursor = 0
    for step in ro.steps:
        if step <= start_percent and step != ro.steps[-1]:
            continue
        if step < start_percent:
            continue
        t_step = time.monotonic()
        set_percent(db, m, float(step), reason="auto rollout")
        router.share(refresh=True)
        percent = float(step)
        report = StepReport(step)
        since: datetime = evaluator.now()
        while True:
            report.windows += 1
            cursor = _replay(
                router,
                queries,
                cursor,
                ro.queries_per_step,
                n_callers,
                ro.window_seconds,
                evaluator,
                since,
                report,
            )
            router.flush()  # the step's searches are in the record before the gates read it
            report.arms = db.run(partial(_step_stats, mid=m.id, since=since, percent=step), what="step_stats")
            report.failures = step_gates(report.arms, cfg)
            states = evaluator.evaluate(since=since)
            firing = [s for s in states if s.state == "firing"]
            report.alerts = [s.as_dict() for s in states if s.state != "ok"]
            for s in firing:
                if s.rule.rolls_back:
                    report.failures.append(
                        f"alert {s.rule.name} ({s.rule.condition}) fired at {step}%: value {s.value:.4g}"
                    )
            if report.failures:
                break
            holding = [s for s in firing if not s.rule.rolls_back]
            if not holding:
                break
            if report.windows > HOLD_WINDOWS:
                report.failures.append(
                    f"alerts still firing at {step}% after {HOLD_WINDOWS} extra windows: "
                    + ", ".join(f"{s.rule.name} ({s.rule.condition})" for s in holding)
                )
                break
            log.warning("rollout.hold", percent=step, alerts=[s.rule.name for s in holding])
        report.seconds = time.monotonic() - t_step
        steps.append(report)

        def step_event(c: psycopg.Connection, r: StepReport = report) -> None:
            mig.event(c, m.id, "rollout_step", **r.as_dict())

        db.run(step_event, what="step_event")
        log.info(
            "rollout.step",
            migration=m.id,
            percent=step,
            passed=not report.failures,
            new_queries=report.arms.get("new", {}).get("queries", 0),
        )
        if on_step is not None:
            on_step(report)
        if report.failures:
            return {"failures": report.failures, "percent": percent, "steps": [s.as_dict() for s in steps]}
    return {"failures": [], "percent": percent, "steps": [s.as_dict() for s in steps]}


def _step_stats(conn: Any, mid: int, since: datetime, percent: float) -> dict[str, dict[str, Any]]:
    from swarm.store.querylog import arm_stats

    stats = arm_stats(conn, since=since, migration_id=mid, sources=TRAFFIC, percent=percent)
    return {arm: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()} for arm, s in stats.items()}


def _replay(
    router: Router,
    queries: list[Query],
    cursor: int,
    n: int,
    n_callers: int,
    window: float,
    evaluator: AlertEvaluator,
    since: datetime,
    report: StepReport,
) -> int:
    """Send ``n`` queries paced over ``window`` seconds; evaluate the alerts about once a second."""
    from swarm.core.errors import SwarmError

    started = time.monotonic()
    last_eval = started
    for i in range(n):
        q = queries[cursor % len(queries)]
        cursor += 1
        try:
            router.search(q.text, caller=f"replay-{i % n_callers}")
        except SwarmError as e:  # both arms failed (on record, counted by the gates), or shed
            log.warning("rollout.replay_failed", error=str(e)[:200])
        report.replayed += 1
        now = time.monotonic()
        if now - last_eval >= 1.0:
            evaluator.evaluate(since=since)
            last_eval = now
        ahead = started + window * (i + 1) / n - now
        if ahead > 0:
            time.sleep(ahead)
    while time.monotonic() - started < window:  # replay was faster than the window
        time.sleep(min(1.0, window - (time.monotonic() - started)))
        evaluator.evaluate(since=since)
    return cursor


def run_auto(cfg: Config, db: Database, m: mig.Migration, dsn: str, *, out: Any = None) -> dict[str, Any]:
    """``rollout --auto`` outside the coordinator: step through the rollout with the query set replayed through
    a router of this process, each step echoed to ``out``. Returns :func:`auto`'s result; the caller rolls back
    on failures (:func:`swarm.commands.rollout`)."""
    from swarm.quality import load_queries, sample
    from swarm.serving.router import Router

    queries = sample(load_queries(cfg.path(cfg.validation.queries)), cfg.validation.sample_queries, seed=m.id)
    router = Router(cfg, dsn, source="replay")

    def echo(r: StepReport) -> None:
        if out:
            new = r.arms.get("new", {})
            out(
                f"{r.percent:>3}%: {r.replayed} queries, {new.get('queries', 0)} on the new column, "
                f"errors {new.get('errors', 0)}, p95 search {_ms(new.get('p95_search_ms'))}"
                + (f"  FAILED: {'; '.join(r.failures)}" if r.failures else "  ok")
            )

    try:
        return auto(cfg, db, m, router, queries, on_step=echo)
    finally:
        router.close()


def _ms(v: float | None) -> str:
    return f"{v:.1f} ms" if v is not None else "-"
