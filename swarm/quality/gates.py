"""The validation gates: from each query's results on both arms to a verdict, PASS, FAIL or INCONCLUSIVE.

Each query was searched four ways: each arm (legacy column with the legacy model, new column with the new
model) through its ANN index with the settings the application uses, and by exact search. So a round separates

* **model quality**: exact against exact, the models alone. The MRR@10 gate (labelled query sets) and the
  overlap@k gate (sets without labels) use these figures, never the ANN ones: an ivfflat index searched at
  ``probes = 1`` next to an hnsw index at ``ef_search = 80`` would otherwise pass a worse model.
* **index recall**: per arm, the share of the exact top k that its ANN search also returns.

Evidence, not point estimates, decides. Over the judged queries (both exact searches answered), a paired
bootstrap interval (95%, ``validation.bootstrap_resamples``, seeded) of the MRR@10 drop (legacy minus new):

* lies wholly above ``validation.max_mrr_drop``: **FAIL**;
* lies wholly at or below it: the quality gate passes;
* straddles it: **INCONCLUSIVE** (more queries are needed).

The same for mean overlap@k against ``validation.min_overlap_at_k`` on sets without labels, and for each slice
of the query set with at least ``validation.min_queries`` judged queries (an average must not hide one slice's
regression; with S slices gated, each slice's interval is 1 - 5%/S wide, so noise fails a round no more often
for having slices). During the backfill a slice can only stop the migration: a slice whose interval lies above
the limit FAILs the round (fail fast), one whose interval straddles it is reported (``undecided``, and the
slice's own verdict) but leaves the round's verdict to the whole set's gates, because a slice of a partial round
holds a few dozen queries and its widened interval straddles the limit by noise alone; the final round, on
every query, gates each slice fully (straddling is INCONCLUSIVE there). Fail closed: fewer than
``min_queries`` judged queries, or errors on the legacy arm, make the round INCONCLUSIVE, never a pass. In
the final round (``final=True``) the new arm's error rate and p95 search latency are gated as well (FAIL);
during the backfill the new column has no index yet and shares the machine with the migrators, so errors there
make a round INCONCLUSIVE and latency is reported, not gated.

``failures`` lists every reason the verdict is not PASS (what older readers such as ``decommission`` check);
``inconclusive`` the reasons that were only inconclusive; ``undecided`` the slices a backfill round left to the
final round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np

from swarm.quality.metrics import RANK_K, Hit, mrr_at_k, overlap_at_k, summarize
from swarm.quality.queries import Query
from swarm.quality.stats import LEVEL, Interval, bootstrap_mean, ks_statistic, paired_bootstrap, quantiles, seed_for
from swarm.quality.stats import shared_histogram as histogram

if TYPE_CHECKING:
    from swarm.core.config import ValidationConfig

ARMS = ("legacy", "new")
MODES = ("exact", "ann")


class Verdict(StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"


@dataclass
class _Findings:
    failures: list[str] = field(default_factory=list)
    inconclusive: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> Verdict:
        if self.failures:
            return Verdict.FAIL
        if self.inconclusive:
            return Verdict.INCONCLUSIVE
        return Verdict.PASS


def evaluate(
    queries: Sequence[Query],
    hits: Mapping[str, Sequence[Hit]],
    gates: ValidationConfig,
    *,
    seed: Sequence[int],
    final: bool,
    k: int | None = None,
) -> dict[str, Any]:
    """The verdict and the figures of one round. ``hits`` holds, for ``"legacy_exact"``, ``"legacy_ann"``,
    ``"new_exact"`` and ``"new_ann"``, one Hit per query in the order of ``queries``."""
    k = int(k or gates.k)
    n = len(queries)
    for key in (f"{a}_{m}" for a in ARMS for m in MODES):
        if len(hits[key]) != n:
            raise ValueError(f"{key}: {len(hits[key])} results for {n} queries")
    found = _Findings()
    le, ne = hits["legacy_exact"], hits["new_exact"]
    judged = [i for i in range(n) if le[i].error is None and ne[i].error is None]
    jq = [queries[i] for i in judged]
    labelled = [i for i in judged if queries[i].labelled]
    arm_errors = {
        arm: sum(1 for i in range(n) if hits[f"{arm}_exact"][i].error or hits[f"{arm}_ann"][i].error) for arm in ARMS
    }

    # -- fail closed on what cannot be compared -----------------------------------------------------------
    if n == 0:
        found.inconclusive.append("no query could be judged (empty query set, or none of their answers is migrated)")
    if n and arm_errors["legacy"] / n > gates.max_error_rate:
        found.inconclusive.append(
            f"the legacy arm failed {arm_errors['legacy']} of {n} queries ({_first_error(hits, 'legacy')}); "
            "the models cannot be compared on what it did not answer"
        )
    if n and arm_errors["new"] / n > gates.max_error_rate:
        msg = (
            f"error rate on the new column is {arm_errors['new'] / n:.2%} ({arm_errors['new']}/{n}; "
            f"{_first_error(hits, 'new')}) > validation.max_error_rate {gates.max_error_rate:.2%}"
        )
        (found.failures if final else found.inconclusive).append(msg)

    # -- model quality: exact against exact, paired per query ---------------------------------------------
    mrr = {
        arm: np.array([mrr_at_k(hits[f"{arm}_exact"][i].ids, queries[i].relevant, RANK_K) for i in labelled])
        for arm in ARMS
    }
    overlap = np.array([overlap_at_k(le[i].ids, ne[i].ids, k) for i in judged])
    is_labelled = any(q.labelled for q in queries)
    quality: dict[str, Any] = {"measure": "mrr_drop" if is_labelled else "overlap_at_k", "mrr_drop": None}
    quality["overlap"] = None
    if is_labelled:
        quality["mrr_drop"] = _mrr_gate(found, "", labelled, mrr["legacy"], mrr["new"], gates, seed, n)
    else:
        quality["overlap"] = _overlap_gate(found, "", overlap, gates, seed, n, k)

    # -- slices -----------------------------------------------------------------------------------------
    slices: dict[str, dict[str, Any]] = {}
    names = sorted({q.slice for q in queries if q.slice is not None})
    # Each gated slice is one more chance for noise to look like a regression: their intervals are widened
    # (Bonferroni) so that, over all slices of a round, a model as good as legacy fails at most 5% of the time.
    gate_pool = labelled if is_labelled else judged
    gated = sum(1 for name in names if sum(1 for i in gate_pool if queries[i].slice == name) >= gates.min_queries)
    slice_level = 1.0 - (1.0 - LEVEL) / max(1, gated)
    undecided: list[str] = []

    def merge(sub: _Findings) -> str:
        found.failures += sub.failures
        if final or sub.failures:
            found.inconclusive += sub.inconclusive
            return sub.verdict.value
        undecided.extend(sub.inconclusive)
        return f"{sub.verdict.value} (left to the final round)" if sub.inconclusive else sub.verdict.value

    for name in names:
        if is_labelled:
            pos = [j for j, i in enumerate(labelled) if queries[i].slice == name]
            entry: dict[str, Any] = {"queries": len(pos), "measure": "mrr_drop", "level": round(slice_level, 4)}
            if len(pos) >= gates.min_queries:
                sub = _Findings()
                iv = _mrr_gate(
                    sub, name, pos, mrr["legacy"][pos], mrr["new"][pos], gates, seed, len(pos), level=slice_level
                )
                entry.update(interval=iv, verdict=merge(sub))
            else:
                entry["verdict"] = f"not gated (fewer than validation.min_queries {gates.min_queries})"
            entry["legacy_mrr_at_10"] = _mean(mrr["legacy"][pos]) if pos else None
            entry["new_mrr_at_10"] = _mean(mrr["new"][pos]) if pos else None
        else:
            pos = [j for j, i in enumerate(judged) if queries[i].slice == name]
            entry = {"queries": len(pos), "measure": "overlap_at_k", "level": round(slice_level, 4)}
            if len(pos) >= gates.min_queries:
                sub = _Findings()
                iv = _overlap_gate(sub, name, overlap[pos], gates, seed, len(pos), k, level=slice_level)
                entry.update(interval=iv, verdict=merge(sub))
            else:
                entry["verdict"] = f"not gated (fewer than validation.min_queries {gates.min_queries})"
        slices[name] = entry

    # -- what the application sees: ANN, errors, latency --------------------------------------------------
    ann = {arm: summarize(queries, hits[f"{arm}_ann"], k) for arm in ARMS}
    if final and ann["new"].search_p95_ms is not None and ann["new"].search_p95_ms > gates.max_p95_latency_ms:
        found.failures.append(
            f"p95 search latency on the new column is {ann['new'].search_p95_ms:.1f} ms "
            f"> validation.max_p95_latency_ms {gates.max_p95_latency_ms:g}"
        )
    exact = {arm: summarize(jq, [hits[f"{arm}_exact"][i] for i in judged], k) for arm in ARMS}
    verdict = found.verdict
    mrr_iv = quality["mrr_drop"]
    overlap_mean = _mean(overlap) if len(overlap) else None
    return {
        "verdict": verdict.value,
        "failures": found.failures + found.inconclusive,
        "inconclusive": found.inconclusive,
        "undecided": undecided,
        "queries": n,
        "judged": len(judged),
        "labelled": len(labelled),
        "k": k,
        # Model quality (exact search on both arms, over the judged queries): what the gates decide on.
        "legacy": exact["legacy"].as_dict(),
        "new": exact["new"].as_dict(),
        "mrr_drop": mrr_iv["mean"] if mrr_iv else None,
        "mrr_drop_ci": [mrr_iv["lo"], mrr_iv["hi"]] if mrr_iv else None,
        "overlap_at_k": round(overlap_mean, 4) if overlap_mean is not None else None,
        "overlap_ci": [quality["overlap"]["lo"], quality["overlap"]["hi"]] if quality["overlap"] else None,
        "gate": quality["measure"],
        # What the application's indexes give (ANN, with each arm's settings), and what they lose.
        "ann": {arm: ann[arm].as_dict() for arm in ARMS},
        "index_recall": {arm: _index_recall(queries, hits, arm, k) for arm in ARMS},
        "errors_by_arm": arm_errors,
        "slices": slices,
        "scores": _scores(hits, judged),
        "errors": [
            {"query": queries[i].text[:200], "arm": arm, "search": mode, "error": hits[f"{arm}_{mode}"][i].error}
            for i in range(n)
            for arm in ARMS
            for mode in MODES
            if hits[f"{arm}_{mode}"][i].error
        ][:20],
    }


def _mean(x: Any) -> float:
    return round(float(np.mean(x)), 4)


def _first_error(hits: Mapping[str, Sequence[Hit]], arm: str) -> str:
    for mode in MODES:
        for h in hits[f"{arm}_{mode}"]:
            if h.error:
                return f"first error: {h.error[:160]}"
    return "no error message"


def _too_few(found: _Findings, label: str, judged: int, asked: int, gates: ValidationConfig) -> bool:
    if judged >= gates.min_queries:
        return False
    found.inconclusive.append(
        f"{label}only {judged} of {asked} queries could be judged (validation.min_queries {gates.min_queries})"
    )
    return True


def _mrr_gate(
    found: _Findings,
    slice_name: str,
    positions: Sequence[int],
    legacy: np.ndarray,
    new: np.ndarray,
    gates: ValidationConfig,
    seed: Sequence[int],
    asked: int,
    *,
    level: float = LEVEL,
) -> dict[str, Any] | None:
    label = f"slice {slice_name!r}: " if slice_name else ""
    if _too_few(found, label, len(positions), asked, gates):
        return None
    iv = paired_bootstrap(
        legacy, new, seed=[*seed, *seed_for("mrr", slice_name)], resamples=gates.bootstrap_resamples, level=level
    )
    figures = (
        f"{level * 100:.4g}% CI {iv.lo:.3f} to {iv.hi:.3f}; legacy {float(np.mean(legacy)):.3f}, "
        f"new {float(np.mean(new)):.3f}, exact search, {iv.n} queries"
    )
    if iv.above(gates.max_mrr_drop):
        found.failures.append(
            f"{label}MRR@10 dropped by {iv.mean:.3f} ({figures}) > validation.max_mrr_drop {gates.max_mrr_drop}"
        )
    elif not iv.below(gates.max_mrr_drop):
        found.inconclusive.append(
            f"{label}MRR@10 drop {iv.mean:.3f} ({figures}) straddles validation.max_mrr_drop {gates.max_mrr_drop}: "
            "more queries are needed to decide"
        )
    return iv.as_dict()


def _overlap_gate(
    found: _Findings,
    slice_name: str,
    overlap: np.ndarray,
    gates: ValidationConfig,
    seed: Sequence[int],
    asked: int,
    k: int,
    *,
    level: float = LEVEL,
) -> dict[str, Any] | None:
    label = f"slice {slice_name!r}: " if slice_name else ""
    if _too_few(found, label, len(overlap), asked, gates):
        return None
    iv: Interval = bootstrap_mean(
        overlap, seed=[*seed, *seed_for("overlap", slice_name)], resamples=gates.bootstrap_resamples, level=level
    )
    figures = f"{level * 100:.4g}% CI {iv.lo:.3f} to {iv.hi:.3f}, exact search, {iv.n} queries"
    limit = gates.min_overlap_at_k
    if iv.hi < limit:
        found.failures.append(
            f"{label}overlap@{k} with legacy results is {iv.mean:.3f} ({figures}) < validation.min_overlap_at_k {limit}"
        )
    elif iv.lo < limit:
        found.inconclusive.append(
            f"{label}overlap@{k} {iv.mean:.3f} ({figures}) straddles validation.min_overlap_at_k {limit}: "
            "more queries are needed to decide"
        )
    return iv.as_dict()


def _index_recall(queries: Sequence[Query], hits: Mapping[str, Sequence[Hit]], arm: str, k: int) -> dict[str, Any]:
    """Per arm: how much of the exact top k the ANN search returns, over the rows the round searched.

    During the backfill both searches are restricted to rows that already have a new vector; pgvector < 0.8 has
    no iterative index scans, so a filtered ANN search may return fewer than k rows (``short``): that is counted
    as lost recall, as the application would lose it on such a filter.
    """
    ex, an = hits[f"{arm}_exact"], hits[f"{arm}_ann"]
    both = [i for i in range(len(queries)) if ex[i].error is None and an[i].error is None and ex[i].ids]
    if not both:
        return {"queries": 0, "recall": None, "lost": None, "short": 0}
    rec = [len(set(an[i].ids[:k]) & set(ex[i].ids[:k])) / len(ex[i].ids[:k]) for i in both]
    short = sum(1 for i in both if len(an[i].ids[:k]) < len(ex[i].ids[:k]))
    lab = [i for i in both if queries[i].labelled]
    out: dict[str, Any] = {
        "queries": len(both),
        "recall": _mean(rec),
        "lost": round(1.0 - float(np.mean(rec)), 4),
        "short": short,
    }
    if lab:
        out["mrr_at_10_exact"] = _mean([mrr_at_k(ex[i].ids, queries[i].relevant) for i in lab])
        out["mrr_at_10_ann"] = _mean([mrr_at_k(an[i].ids, queries[i].relevant) for i in lab])
    return out


def _scores(hits: Mapping[str, Sequence[Hit]], judged: Sequence[int]) -> dict[str, Any]:
    """Top-1 cosine similarity of each arm (exact search): a fixed similarity threshold in an application means
    something else once the model changes; the KS statistic says how far the two distributions are apart."""
    top = {
        arm: [1.0 - hits[f"{arm}_exact"][i].distances[0] for i in judged if hits[f"{arm}_exact"][i].distances]
        for arm in ARMS
    }
    ks = ks_statistic(top["legacy"], top["new"])
    return {
        "top1_similarity": {arm: quantiles(top[arm]) for arm in ARMS},
        "histogram": histogram(top),
        "ks": round(ks, 4) if ks is not None else None,
    }
