"""The validator: compares legacy and new search results on a query set, gates the migration, rolls it out.

A plain class; :mod:`swarm.agents_ray` wraps it as the named, detached ``validator-N`` actor. Both embedders
(the legacy model that filled the legacy column, and the new model with its query prefix) are loaded on first
use and kept, so the auto rollout that follows validation reuses them.

``validate(mid)`` embeds each sampled query with both models, searches both columns with the same k and
computes per arm MRR@10, nDCG@10 and recall@k (labelled sets), overlap@k between the arms, search latency
p50/p95 and errors; then the gates of ``[validation]`` (:func:`swarm.quality.check_gates`). While the backfill
still runs, both arms search only the rows that already have a new vector, and only the queries whose relevant
rows all have one count, so a half-migrated table is compared like with like (``partial`` in the report). The
report is stored in ``swarm.events`` (kind ``validation``) and returned; non-empty ``failures`` make the
coordinator roll back.
"""

from __future__ import annotations

import time
from typing import Any

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
        self.reports: list[dict[str, Any]] = []

    def ping(self) -> str:
        return self.name

    def close(self) -> None:
        """Close this validator's connections (its own and its router's)."""
        self.db.close()
        if self._router is not None:
            self._router.close()

    @property
    def router(self) -> Any:
        """One router for validation (unrecorded searches) and rollout replays (recorded as ``replay``)."""
        if self._router is None:
            from swarm.serving.router import Router

            self._router = Router(self.cfg, self.dsn, source="replay")
        return self._router

    def _queries(self) -> list[Any]:
        from swarm.quality import load_queries, queries_from_table

        src = self.cfg.validation.queries
        if src.startswith("table:"):
            return self.db.run(lambda c: queries_from_table(c, src.removeprefix("table:")), what="queries")
        return load_queries(self.cfg.path(src))

    # -- validation ----------------------------------------------------------------------------------------
    def validate(self, mid: int) -> dict[str, Any]:
        """Compare both arms on the sampled query set; returns the report with its ``failures``."""
        from swarm.core.errors import ConfigError
        from swarm.quality import check_gates, mean_overlap, sample, summarize
        from swarm.serving.router import Share

        started = time.monotonic()
        v = self.cfg.validation
        m = self.db.run(lambda c: mig.load(c, mid), what="load")
        try:
            queries = sample(self._queries(), v.sample_queries, seed=mid)
        except ConfigError as e:
            return self._store(mid, {"failures": [f"query set: {e}"], "queries": 0})
        total, with_new = self.db.run(
            lambda c: (
                c.execute(m.target.count_rows()).fetchone()[0],
                c.execute(m.target.count_with_vector()).fetchone()[0],
            ),
            what="coverage",
        )
        partial = with_new < total
        if partial and any(q.labelled for q in queries):
            # Only queries whose answers are already migrated can be judged.
            ids = sorted({r for q in queries for r in q.relevant})
            have = {
                r[0]
                for r in self.db.run(
                    lambda c: c.execute(_with_vector_sql(m), [ids]).fetchall(), what="labelled_coverage"
                )
            }
            queries = [q for q in queries if not q.labelled or q.relevant <= have]
        share = Share(m, 0.0, True)
        legacy_hits, new_hits = [], []
        for q in queries:
            h_legacy, _, _ = self.router.run_arm("legacy", q.text, v.k, share=share, require_new=partial)
            h_new, _, _ = self.router.run_arm("new", q.text, v.k, share=share, require_new=partial)
            legacy_hits.append(h_legacy)
            new_hits.append(h_new)
        legacy = summarize(queries, legacy_hits, v.k)
        new = summarize(queries, new_hits, v.k)
        overlap = mean_overlap(legacy_hits, new_hits, v.k)
        failures = check_gates(legacy, new, overlap, v)
        errors = [
            {"query": q.text[:200], "arm": arm, "error": h.error}
            for q, hl, hn in zip(queries, legacy_hits, new_hits, strict=True)
            for arm, h in (("legacy", hl), ("new", hn))
            if h.error
        ][:20]
        report = {
            "failures": failures,
            "migration": mid,
            "partial": partial,
            "rows_total": int(total),
            "rows_with_new_vector": int(with_new),
            "queries": len(queries),
            "labelled": sum(1 for q in queries if q.labelled),
            "k": v.k,
            "legacy": legacy.as_dict(),
            "new": new.as_dict(),
            "overlap_at_k": round(overlap, 4) if overlap is not None else None,
            "mrr_drop": (
                round(legacy.mrr_at_10 - new.mrr_at_10, 4)
                if legacy.mrr_at_10 is not None and new.mrr_at_10 is not None
                else None
            ),
            "gates": v.model_dump(),
            "legacy_model": self.cfg.legacy.model,
            "new_model": m.model_id,
            "errors": errors,
            "seconds": round(time.monotonic() - started, 2),
        }
        return self._store(mid, report)

    def _store(self, mid: int, report: dict[str, Any]) -> dict[str, Any]:
        report.setdefault("migration", mid)
        self.db.run(lambda c: mig.event(c, mid, "validation", validator=self.name, **report), what="report")
        self.reports.append(report)
        if report["failures"]:
            log.warning("validation.failed", migration=mid, failures=report["failures"])
        else:
            log.info(
                "validation.passed",
                migration=mid,
                queries=report.get("queries"),
                legacy_mrr=report.get("legacy", {}).get("mrr_at_10"),
                new_mrr=report.get("new", {}).get("mrr_at_10"),
                overlap=report.get("overlap_at_k"),
            )
        return report

    # -- rollout -------------------------------------------------------------------------------------------
    def rollout(self, mid: int) -> dict[str, Any]:
        """Step the share through ``[rollout].steps`` (see :func:`swarm.rollout.auto`)."""
        from swarm.quality import sample
        from swarm.serving import rollout

        m = self.db.run(lambda c: mig.load(c, mid), what="load")
        try:
            queries = sample(self._queries(), self.cfg.validation.sample_queries, seed=mid)
        except SwarmError as e:
            return {"failures": [f"query set: {e}"], "percent": float(m.rollout_percent), "steps": []}
        return rollout.auto(self.cfg, self.db, m, self.router, queries)

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "reports": len(self.reports),
            "last": self.reports[-1] if self.reports else None,
        }


def _with_vector_sql(m: mig.Migration) -> Any:
    from psycopg import sql

    t = m.target
    return sql.SQL("SELECT {id}::text FROM {t} WHERE {id}::text = ANY(%s) AND {new} IS NOT NULL").format(
        id=t.id, t=t.t, new=t.new
    )
