"""Search quality: ranking metrics, latency percentiles and the per-arm summary.

Everything here is pure computation over ids and numbers, so the validator, the rollout, ``assess`` and the
report all measure the same way:

* ``MRR@10``: 1/rank of the first relevant id in the top 10, 0 if none; averaged over queries.
* ``nDCG@10``: binary relevance, ``sum(1/log2(rank+1))`` over relevant hits divided by the ideal ordering's.
* ``recall@k``: relevant ids found in the top k over the relevant ids there are (at most k of them count).
* ``overlap@k``: ids both arms return in their top k, over k (over the longer list when both return fewer).

Ids are compared as text: the query set's ``relevant_ids`` may be ints (the demo writes them so) while
searches return ``id::text``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from swarm.quality.queries import Query

RANK_K = 10  # MRR@10 and nDCG@10, as the issue and the seed name them


# ------------------------------------------------------------------------------------------------------------
# Ranking metrics (one query)
# ------------------------------------------------------------------------------------------------------------
def mrr_at_k(ranked: Sequence[str], relevant: Iterable[str], k: int = RANK_K) -> float:
    rel = set(relevant)
    for rank, doc in enumerate(ranked[:k], 1):
        if doc in rel:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranked: Sequence[str], relevant: Iterable[str], k: int = RANK_K) -> float:
    rel = set(relevant)
    if not rel:
        return 0.0
    dcg = sum(1.0 / math.log2(rank + 1) for rank, doc in enumerate(ranked[:k], 1) if doc in rel)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(rel), k) + 1))
    return dcg / ideal


def recall_at_k(ranked: Sequence[str], relevant: Iterable[str], k: int) -> float:
    rel = set(relevant)
    if not rel:
        return 0.0
    return len(rel.intersection(ranked[:k])) / min(len(rel), k)


def overlap_at_k(a: Sequence[str], b: Sequence[str], k: int) -> float:
    """Shared ids in the two top-k lists, over k (or over the longer list when both are shorter than k)."""
    denom = min(k, max(len(a[:k]), len(b[:k])))
    if denom == 0:
        return 1.0  # both empty: they agree
    return len(set(a[:k]).intersection(b[:k])) / denom


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (linear interpolation, as numpy), or None without values."""
    if not len(values):
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


# ------------------------------------------------------------------------------------------------------------
# Per-arm aggregation
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Hit:
    """One query on one arm: what it returned (ids, cosine distances) and what it cost (or why it failed)."""

    ids: list[str] = field(default_factory=list)
    embed_ms: float = 0.0
    search_ms: float = 0.0
    error: str | None = None
    distances: list[float] = field(default_factory=list)

    @property
    def latency_ms(self) -> float:
        return self.embed_ms + self.search_ms

    def as_dict(self) -> dict[str, Any]:
        """Plain data (crosses Ray from a validator to the coordinator)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Hit:
        return cls(**d)


@dataclass
class ArmSummary:
    """What one arm (legacy or new) did over a query set."""

    queries: int
    errors: int
    error_rate: float
    labelled: int
    mrr_at_10: float | None
    ndcg_at_10: float | None
    recall_at_k: float | None
    k: int
    search_p50_ms: float | None
    search_p95_ms: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    embed_p50_ms: float | None

    def as_dict(self) -> dict[str, Any]:
        return {key: (round(v, 4) if isinstance(v, float) else v) for key, v in asdict(self).items()}


def summarize(queries: Sequence[Query], hits: Sequence[Hit], k: int) -> ArmSummary:
    """Aggregate one arm's hits (in the order of ``queries``); failed queries count as errors, not zeros."""
    ok = [(q, h) for q, h in zip(queries, hits, strict=True) if h.error is None]
    labelled = [(q, h) for q, h in ok if q.labelled]
    n = len(hits)
    errors = n - len(ok)

    def mean(vals: list[float]) -> float | None:
        return float(np.mean(vals)) if vals else None

    return ArmSummary(
        queries=n,
        errors=errors,
        error_rate=errors / n if n else 0.0,
        labelled=len(labelled),
        mrr_at_10=mean([mrr_at_k(h.ids, q.relevant, RANK_K) for q, h in labelled]),
        ndcg_at_10=mean([ndcg_at_k(h.ids, q.relevant, RANK_K) for q, h in labelled]),
        recall_at_k=mean([recall_at_k(h.ids, q.relevant, k) for q, h in labelled]),
        k=k,
        search_p50_ms=percentile([h.search_ms for _, h in ok], 50),
        search_p95_ms=percentile([h.search_ms for _, h in ok], 95),
        latency_p50_ms=percentile([h.latency_ms for _, h in ok], 50),
        latency_p95_ms=percentile([h.latency_ms for _, h in ok], 95),
        embed_p50_ms=percentile([h.embed_ms for _, h in ok], 50),
    )


def mean_overlap(a: Sequence[Hit], b: Sequence[Hit], k: int) -> float | None:
    """Mean overlap@k over the queries both arms answered."""
    vals = [overlap_at_k(x.ids, y.ids, k) for x, y in zip(a, b, strict=True) if x.error is None and y.error is None]
    return float(np.mean(vals)) if vals else None
