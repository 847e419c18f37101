"""Search quality: the query set, ranking metrics, latency percentiles, and the validation gates.

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

import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from swarm.errors import ConfigError

if TYPE_CHECKING:
    import psycopg

    from swarm.config import ValidationConfig

RANK_K = 10  # MRR@10 and nDCG@10, as the issue and the seed name them


# ------------------------------------------------------------------------------------------------------------
# The query set
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Query:
    """One query, with the ids of the rows that answer it (empty when the set has no labels)."""

    text: str
    relevant: frozenset[str] = frozenset()

    @property
    def labelled(self) -> bool:
        return bool(self.relevant)


def load_queries(path: str | Path, *, key: str = "validation.queries") -> list[Query]:
    """Read a JSONL query set: one ``{"query": "...", "relevant_ids": [...]}`` per line (labels optional).

    A bad line is a :class:`~swarm.errors.ConfigError` naming the file, the line and what it should hold.
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError(
            key,
            str(p),
            "file not found; run `python -m swarm demo seed` or point it at a JSONL "
            'query set ({"query": ..., "relevant_ids": [...]} per line)',
        ) from None
    out: list[Query] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            text = obj["query"]
            rel = obj.get("relevant_ids") or []
            if not isinstance(text, str) or not text.strip() or not isinstance(rel, list):
                raise TypeError
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ConfigError(
                f"{key} ({p.name} line {n})",
                line[:80],
                'expected {"query": "<text>", "relevant_ids": [<id>, ...]}',
            ) from None
        out.append(Query(text, frozenset(str(r) for r in rel)))
    if not out:
        raise ConfigError(key, str(p), 'holds no queries; add JSONL lines with a "query" key')
    return out


def queries_from_table(conn: psycopg.Connection, table: str) -> list[Query]:
    """A query set kept in a table with columns ``query`` and (optional) ``relevant_ids`` (an array)."""
    from psycopg import sql

    from swarm.sql import table_ident

    cols = {
        r[0]
        for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
            [table],
        ).fetchall()
    }
    if "query" not in cols:
        raise ConfigError("validation.queries", f"table:{table}", "no such table with a `query` column")
    rel = sql.SQL("relevant_ids") if "relevant_ids" in cols else sql.SQL("NULL::text[]")
    rows = conn.execute(
        sql.SQL("SELECT query, {rel} FROM {t} ORDER BY 1").format(rel=rel, t=table_ident(table))
    ).fetchall()
    return [Query(q, frozenset(str(r) for r in (ids or []))) for q, ids in rows if q and q.strip()]


def sample(queries: Sequence[Query], n: int, *, seed: int = 0) -> list[Query]:
    """``n`` queries drawn without replacement, the same ones for the same seed (all when there are fewer)."""
    if len(queries) <= n:
        return list(queries)
    return random.Random(seed).sample(list(queries), n)


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
    """One query on one arm: what it returned and what it cost (or why it failed)."""

    ids: list[str] = field(default_factory=list)
    embed_ms: float = 0.0
    search_ms: float = 0.0
    error: str | None = None

    @property
    def latency_ms(self) -> float:
        return self.embed_ms + self.search_ms


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


# ------------------------------------------------------------------------------------------------------------
# Gates
# ------------------------------------------------------------------------------------------------------------
def check_gates(legacy: ArmSummary, new: ArmSummary, overlap: float | None, gates: ValidationConfig) -> list[str]:
    """The gates of ``[validation]`` that failed, each as a sentence with the numbers and the limit.

    * ``max_mrr_drop``: legacy MRR@10 minus new MRR@10 (labelled query sets).
    * ``min_overlap_at_k``: mean overlap@k between the arms, only for query sets without labels (with labels
      the MRR gate says more: a better model may well return different rows).
    * ``max_error_rate`` and ``max_p95_latency_ms`` (search latency): on the new arm.
    """
    failures: list[str] = []
    if new.queries == 0:
        return ["no query could be validated (empty query set, or no row has a new vector yet)"]
    if legacy.labelled and new.labelled and legacy.mrr_at_10 is not None and new.mrr_at_10 is not None:
        drop = legacy.mrr_at_10 - new.mrr_at_10
        if drop > gates.max_mrr_drop:
            failures.append(
                f"MRR@10 dropped by {drop:.3f} (legacy {legacy.mrr_at_10:.3f}, new {new.mrr_at_10:.3f}) "
                f"> validation.max_mrr_drop {gates.max_mrr_drop}"
            )
    elif overlap is not None and overlap < gates.min_overlap_at_k:
        failures.append(
            f"overlap@{new.k} with legacy results is {overlap:.3f} < validation.min_overlap_at_k "
            f"{gates.min_overlap_at_k}"
        )
    if new.error_rate > gates.max_error_rate:
        failures.append(
            f"error rate on the new column is {new.error_rate:.2%} ({new.errors}/{new.queries}) "
            f"> validation.max_error_rate {gates.max_error_rate:.2%}"
        )
    if new.search_p95_ms is not None and new.search_p95_ms > gates.max_p95_latency_ms:
        failures.append(
            f"p95 search latency on the new column is {new.search_p95_ms:.1f} ms "
            f"> validation.max_p95_latency_ms {gates.max_p95_latency_ms:g}"
        )
    return failures
