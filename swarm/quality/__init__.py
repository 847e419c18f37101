"""Search quality, computed the same way everywhere: the query set (``queries``), ranking metrics and summaries
(``metrics``), the statistics behind a verdict (``stats``) and the validation gates (``gates``)."""

from swarm.quality.gates import ARMS, MODES, Verdict, evaluate
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
from swarm.quality.stats import Interval, bootstrap_mean, ks_statistic, paired_bootstrap

__all__ = [
    "ARMS",
    "MODES",
    "RANK_K",
    "ArmSummary",
    "Hit",
    "Interval",
    "Query",
    "Verdict",
    "bootstrap_mean",
    "evaluate",
    "ks_statistic",
    "load_queries",
    "mean_overlap",
    "mrr_at_k",
    "ndcg_at_k",
    "overlap_at_k",
    "paired_bootstrap",
    "percentile",
    "queries_from_table",
    "recall_at_k",
    "sample",
    "summarize",
]
