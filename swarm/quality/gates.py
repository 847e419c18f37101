"""The validation gates: each failed gate is a sentence with the numbers and the limit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from swarm.quality.metrics import ArmSummary

if TYPE_CHECKING:
    from swarm.core.config import ValidationConfig


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
