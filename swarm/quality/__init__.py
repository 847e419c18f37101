"""Search quality, computed the same way everywhere: the query set (``queries``), ranking metrics and summaries
(``metrics``) and the validation gates (``gates``)."""

from swarm.quality.gates import check_gates
from swarm.quality.metrics import (
    RANK_K,
    ArmSummary,
    Hit,
    mean_overlap,
    mrr_at_k,
    ndcg_at_k,
    overlap_at_k,
    percentile,
    recall_at_k,
    summarize,
)
from swarm.quality.queries import Query, load_queries, queries_from_table, sample

__all__ = [
    "RANK_K",
    "ArmSummary",
    "Hit",
    "Query",
    "check_gates",
    "load_queries",
    "mean_overlap",
    "mrr_at_k",
    "ndcg_at_k",
    "overlap_at_k",
    "percentile",
    "queries_from_table",
    "recall_at_k",
    "sample",
    "summarize",
]
