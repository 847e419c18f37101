"""The statistics behind a verdict: paired bootstrap intervals, the two-sample KS statistic, shared histograms.

Pure numpy. Every resampling is seeded by the caller (the validation rounds seed it from the migration id, the
round number and the slice), so a round computed again from the same results gives the same interval.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The interval the gates use: 95%, as the issue names it.
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean and its bootstrap percentile interval over ``n`` paired observations."""

    mean: float
    lo: float
    hi: float
    n: int

    def above(self, limit: float) -> bool:
        """The whole interval lies above ``limit``: strong evidence that the mean exceeds it."""
        return self.lo > limit

    def below(self, limit: float) -> bool:
        """The whole interval lies at or below ``limit``."""
        return self.hi <= limit

    def as_dict(self) -> dict[str, Any]:
        return {"mean": round(self.mean, 4), "lo": round(self.lo, 4), "hi": round(self.hi, 4), "n": self.n}


def seed_for(*parts: int | str) -> list[int]:
    """A numpy seed sequence from ints and strings (strings through crc32: the same in every process)."""
    return [p if isinstance(p, int) else zlib.crc32(p.encode("utf-8")) for p in parts]


def bootstrap_mean(
    values: Sequence[float] | np.ndarray, *, seed: Sequence[int], resamples: int = 2000, level: float = LEVEL
) -> Interval:
    """The mean of ``values`` with its percentile bootstrap interval (``resamples`` resamples of the queries)."""
    x = np.asarray(values, dtype=np.float64)
    n = int(x.size)
    if n == 0:
        raise ValueError("bootstrap of an empty sample")
    rng = np.random.default_rng(list(seed))
    means = np.empty(resamples, dtype=np.float64)
    # In blocks, so a large query set does not need resamples x n indices at once.
    block = max(1, 2_000_000 // n)
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return Interval(float(x.mean()), float(lo), float(hi), n)


def paired_bootstrap(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    seed: Sequence[int],
    resamples: int = 2000,
    level: float = LEVEL,
) -> Interval:
    """The mean of ``a - b`` over paired observations (the same queries on both arms), with its interval.

    Resampling the queries, not each arm apart, keeps each query's two scores together: most of the variance
    between queries (easy ones, hard ones) cancels, and the interval is about the difference alone.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.size} and {y.size}")
    return bootstrap_mean(x - y, seed=seed, resamples=resamples, level=level)


def ks_statistic(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float | None:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs (0..1)."""
    x, y = np.sort(np.asarray(a, dtype=np.float64)), np.sort(np.asarray(b, dtype=np.float64))
    if x.size == 0 or y.size == 0:
        return None
    grid = np.concatenate([x, y])
    fx = np.searchsorted(x, grid, side="right") / x.size
    fy = np.searchsorted(y, grid, side="right") / y.size
    return float(np.max(np.abs(fx - fy)))


def shared_histogram(samples: Mapping[str, Sequence[float]], bins: int = 20) -> dict[str, Any]:
    """Histograms of several samples over the same edges (the range of all of them), for one chart."""
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in samples.items()}
    pooled = np.concatenate([a for a in arrays.values() if a.size] or [np.zeros(0)])
    if pooled.size == 0:
        return {"edges": [], **{k: [] for k in arrays}}
    lo, hi = float(pooled.min()), float(pooled.max())
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5 / bins, hi + 0.5 / bins
    edges = np.linspace(lo, hi, bins + 1)
    out: dict[str, Any] = {"edges": [round(float(e), 4) for e in edges]}
    for k, a in arrays.items():
        out[k] = [int(c) for c in np.histogram(a, bins=edges)[0]]
    return out


def quantiles(values: Sequence[float], qs: Sequence[float] = (0.1, 0.5, 0.9)) -> dict[str, float] | None:
    """``{"p10": .., "p50": .., "p90": ..}`` of ``values``, or None without values."""
    if not len(values):
        return None
    got = np.quantile(np.asarray(values, dtype=np.float64), list(qs))
    return {f"p{round(q * 100)}": round(float(v), 4) for q, v in zip(qs, got, strict=True)}
