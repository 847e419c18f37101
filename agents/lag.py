"""How far the swarm trails the application: the change queue's length and age, and the rates in and out.

The coordinator samples the queue after every drain round (and every follow interval). From the samples of
the last :attr:`LagMeter.window` seconds it derives the arrival rate (rows the application changed, per
second: the queue's growth plus what was drained) and the embedding rate (rows drained per second). When the
queue keeps growing because rows arrive faster than they are embedded, the swarm is *falling behind*: ``status``
and the log say so with both rates, instead of the migration silently never settling.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Lag:
    queued: int
    oldest_seconds: float | None
    arrival_rows_per_second: float | None
    embed_rows_per_second: float | None
    falling_behind: bool
    at: float

    def as_dict(self) -> dict[str, object]:
        def r(x: float | None) -> float | None:
            return round(x, 2) if x is not None else None

        return {
            "queued": self.queued,
            "oldest_seconds": r(self.oldest_seconds),
            "arrival_rows_per_second": r(self.arrival_rows_per_second),
            "embed_rows_per_second": r(self.embed_rows_per_second),
            "falling_behind": self.falling_behind,
            "at": round(self.at, 3),
        }


class LagMeter:
    """Samples of (time, queued, rows drained so far) over a sliding window."""

    def __init__(self, window: float = 30.0, min_span: float = 10.0, settle_rows: int = 0) -> None:
        self.window = window
        self.min_span = min_span  # rates need at least this much history before they judge anything
        self.settle_rows = settle_rows
        self._samples: deque[tuple[float, int, int]] = deque()
        self.drained = 0

    def reset(self) -> None:
        self._samples.clear()

    def sample(self, queued: int, oldest_seconds: float | None, drained: int, now: float | None = None) -> Lag:
        """Record a sample after ``drained`` more rows were drained since the last one; returns the lag."""
        now = time.monotonic() if now is None else now
        self.drained += drained
        self._samples.append((now, queued, self.drained))
        while len(self._samples) > 2 and now - self._samples[0][0] > self.window:
            self._samples.popleft()
        t0, q0, d0 = self._samples[0]
        span = now - t0
        arrival = embed = None
        behind = False
        if span >= 1.0:
            embed = (self.drained - d0) / span
            arrival = (queued - q0 + self.drained - d0) / span
            behind = (
                span >= self.min_span and queued > max(self.settle_rows, 0) and queued > q0 and arrival > 1.05 * embed
            )
        return Lag(queued, oldest_seconds, arrival, embed, behind, time.time())
