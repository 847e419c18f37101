"""Alert rules (``configs/alerts.yaml``, the seed's format) evaluated over the router's recorded metrics.

A rule::

    - name: high_embedding_latency
      condition: p95_latency > 50ms     # <metric> <op> <number>[unit]
      duration: 5m                      # how long the condition must hold before the alert fires
      severity: warning                 # info | warning | critical
      arm: new                          # optional: new | legacy | all (default)

Metrics, over the search record (``swarm.query_rollup``, per minute: :mod:`swarm.store.querylog`) in the
evaluation window (the minutes that overlap the last ``lookback`` seconds, or the time since a rollout step
began): ``p50_latency``, ``p95_latency``, ``p99_latency`` (embedding + search, what a caller waits),
``p95_search_latency``, ``p95_embed_latency`` (ms; ``ms`` or ``s`` units; read from the record's fixed
latency histograms, interpolated inside a bucket as Prometheus does), ``error_rate``, ``cache_hit_rate``
(fractions; ``%`` allowed), ``queries``.

Semantics are Prometheus' ``for:``: an evaluation where the condition holds makes the rule *pending*; it
*fires* once the condition has held at every evaluation for ``duration``; an evaluation where it does not hold
(or where there is no traffic to measure) resets it. A firing alert is logged, recorded in ``swarm.events``
(kind ``alert``, so ``status`` can show it and another process can read it), and POSTed as JSON to
``rollout.webhook_url`` when one is set. An ``error_rate`` alert firing during a rollout rolls the migration
back (:mod:`swarm.rollout`).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swarm.core.errors import ConfigError
from swarm.core.log import get_logger

if TYPE_CHECKING:
    import psycopg

    from swarm.store.pool import Runner

log = get_logger()

SEVERITIES = ("info", "warning", "critical")
ARMS = ("all", "new", "legacy")
_LATENCY = ("p50_latency", "p95_latency", "p99_latency", "p95_search_latency", "p95_embed_latency")
_RATES = ("error_rate", "cache_hit_rate")
METRICS = (*_LATENCY, *_RATES, "queries")
_OPS = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}
_COND = re.compile(r"^\s*([a-z0-9_]+)\s*(>=|<=|==|!=|>|<)\s*([-+]?\d+(?:\.\d+)?)\s*(ms|s|%)?\s*$")
_DUR = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DUR_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_KEYS = ("name", "condition", "duration", "severity", "arm", "description")


@dataclass(frozen=True)
class Rule:
    """One parsed rule; ``threshold`` is in the metric's unit (ms for latencies, a fraction for rates)."""

    name: str
    condition: str
    metric: str
    op: str
    threshold: float
    duration_s: float
    severity: str = "warning"
    arm: str = "all"
    description: str = ""

    def holds(self, value: float | None) -> bool:
        return value is not None and bool(_OPS[self.op](value, self.threshold))

    @property
    def rolls_back(self) -> bool:
        """An error-rate alert during a rollout rolls the migration back; the others hold the rollout."""
        return self.metric == "error_rate"


def parse_duration(text: object, where: str = "duration") -> float:
    """``"5m"`` -> 300.0; ``"30s"``, ``"250ms"``, ``"1h"``, a bare number is seconds."""
    m = _DUR.match(str(text)) if isinstance(text, (str, int, float)) else None
    if not m:
        raise ConfigError(where, text, "a duration like 30s, 5m or 1h")
    return float(m.group(1)) * _DUR_UNITS[m.group(2)]


def parse_condition(text: object, where: str = "condition") -> tuple[str, str, float]:
    """``"p95_latency > 50ms"`` -> ("p95_latency", ">", 50.0); ``"error_rate > 0.1%"`` -> (.., .., 0.001)."""
    m = _COND.match(text) if isinstance(text, str) else None
    if not m:
        raise ConfigError(where, text, "write <metric> <op> <number>[unit], e.g. p95_latency > 50ms")
    metric, op, num, unit = m.group(1), m.group(2), float(m.group(3)), m.group(4)
    if metric not in METRICS:
        raise ConfigError(where, text, f"unknown metric {metric!r}; one of {', '.join(METRICS)}")
    if metric in _LATENCY:
        if unit == "%":
            raise ConfigError(where, text, "a latency takes ms or s, not %")
        return metric, op, num * 1000 if unit == "s" else num
    if metric in _RATES:
        if unit in ("ms", "s"):
            raise ConfigError(where, text, f"{metric} is a fraction; write 0.001 or 0.1%")
        value = num / 100 if unit == "%" else num
        if not 0 <= value <= 1:
            raise ConfigError(where, text, f"{metric} is between 0 and 1 (0% and 100%)")
        return metric, op, value
    if unit is not None:
        raise ConfigError(where, text, f"{metric} is a count; drop the unit")
    return metric, op, num


def parse_rules(data: Any, source: str = "alerts") -> list[Rule]:
    """Rules from the parsed YAML: ``{"alerts": [...]}`` or a bare list."""
    items = data.get("alerts") if isinstance(data, dict) else data
    if data is None or items is None:
        return []
    if not isinstance(items, list):
        raise ConfigError(f"{source}: alerts", type(items).__name__, "must be a list of rules")
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"{source}: alerts[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(where, item, "each rule is a mapping with name, condition, duration, severity")
        for key in item:
            if key not in _KEYS:
                raise ConfigError(f"{where}.{key}", item[key], f"unknown key; use {', '.join(_KEYS)}")
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where}.name", name, "every rule needs a name")
        if name in seen:
            raise ConfigError(f"{where}.name", name, "duplicate rule name; names must be unique")
        seen.add(name)
        if "condition" not in item:
            raise ConfigError(f"{where}.condition", None, "missing; e.g. p95_latency > 50ms")
        metric, op, threshold = parse_condition(item["condition"], f"{where}.condition")
        severity = item.get("severity", "warning")
        if severity not in SEVERITIES:
            raise ConfigError(f"{where}.severity", severity, f"one of {', '.join(SEVERITIES)}")
        arm = item.get("arm", "all")
        if arm not in ARMS:
            raise ConfigError(f"{where}.arm", arm, f"one of {', '.join(ARMS)}")
        rules.append(
            Rule(
                name=name,
                condition=str(item["condition"]).strip(),
                metric=metric,
                op=op,
                threshold=threshold,
                duration_s=parse_duration(item.get("duration", "0s"), f"{where}.duration"),
                severity=severity,
                arm=arm,
                description=str(item.get("description", "")),
            )
        )
    return rules


def load_rules(path: str | Path) -> list[Rule]:
    """Parse an alerts YAML file; a missing file means no rules (logged), a malformed one is a ConfigError."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        log.warning("alerts.no_file", path=str(p))
        return []
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(
            "rollout.alerts", str(p), f"not valid YAML ({str(e).splitlines()[0]}); fix the syntax"
        ) from None
    return parse_rules(data, p.name)


# ------------------------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------------------------
def measure(
    conn: psycopg.Connection,
    *,
    since: datetime,
    until: datetime,
    arm: str = "all",
    migration_id: int | None = None,
    sources: tuple[str, ...] | None = None,
) -> dict[str, float | None]:
    """Every metric of :data:`METRICS` over the record's minutes that overlap [since, until], of ``arm``."""
    from swarm.store.querylog import arm_stats

    per_arm = arm_stats(conn, since=since, until=until, migration_id=migration_id, sources=sources)
    if arm != "all":
        per_arm = {a: s for a, s in per_arm.items() if a == arm}
    if not per_arm:
        return {m: None for m in METRICS} | {"queries": 0.0}
    if len(per_arm) == 1:
        return _metrics_from(next(iter(per_arm.values())))
    # Several arms: percentiles of the summed histograms, not of per-arm percentiles.
    both = arm_stats(conn, since=since, until=until, migration_id=migration_id, sources=sources, per_arm=False)
    return _metrics_from(both["all"])


def _metrics_from(s: dict[str, Any]) -> dict[str, float | None]:
    f = lambda v: float(v) if v is not None else None  # noqa: E731
    return {
        "p50_latency": f(s["p50_latency_ms"]),
        "p95_latency": f(s["p95_latency_ms"]),
        "p99_latency": f(s["p99_latency_ms"]),
        "p95_search_latency": f(s["p95_search_ms"]),
        "p95_embed_latency": f(s["p95_embed_ms"]),
        "error_rate": f(s["error_rate"]) if s["queries"] else None,
        "cache_hit_rate": f(s["cache_hit_rate"]),
        "queries": float(s["queries"]),
    }


# ------------------------------------------------------------------------------------------------------------
# Evaluating
# ------------------------------------------------------------------------------------------------------------
@dataclass
class AlertState:
    rule: Rule
    state: str = "ok"  # ok | pending | firing
    value: float | None = None
    pending_since: datetime | None = None
    fired_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.rule.name,
            "state": self.state,
            "severity": self.rule.severity,
            "condition": self.rule.condition,
            "duration_s": self.rule.duration_s,
            "arm": self.rule.arm,
            "value": self.value,
            "pending_since": _iso(self.pending_since),
            "fired_at": _iso(self.fired_at),
        }


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


class AlertEvaluator:
    """Evaluates rules periodically; keeps each rule's pending/firing state between evaluations.

    ``evaluate(now=...)`` takes the evaluation time (the database clock when omitted) so that a caller, or a
    test, controls the clock while the metrics stay the real recorded ones.
    """

    def __init__(
        self,
        rules: list[Rule],
        db: Runner,
        *,
        migration_id: int | None = None,
        webhook_url: str = "",
        lookback_s: float = 60.0,
        sources: tuple[str, ...] | None = None,
    ) -> None:
        self.rules = rules
        self.db = db
        self.migration_id = migration_id
        self.webhook_url = webhook_url
        self.lookback = timedelta(seconds=lookback_s)
        self.sources = sources
        self.states = {r.name: AlertState(r) for r in rules}

    def now(self) -> datetime:
        from swarm.store.db import one

        row = self.db.run(lambda c: c.execute("SELECT clock_timestamp()").fetchone(), what="clock")
        return one(row, "the clock")[0]

    def evaluate(self, now: datetime | None = None, *, since: datetime | None = None) -> list[AlertState]:
        """Measure each rule over [max(since, now - lookback), now], advance its state; returns all states.

        Transitions to firing and back to ok are logged, recorded in ``swarm.events`` and sent to the webhook.
        """
        if not self.rules:
            return []
        now = now or self.now()
        start = now - self.lookback
        if since is not None and since > start:
            start = since
        cache: dict[str, dict[str, float | None]] = {}
        for st in self.states.values():
            rule = st.rule
            if rule.arm not in cache:

                def measure_arm(c: psycopg.Connection, a: str = rule.arm) -> dict[str, float | None]:
                    return measure(
                        c, since=start, until=now, arm=a, migration_id=self.migration_id, sources=self.sources
                    )

                cache[rule.arm] = self.db.run(measure_arm, what="alert_measure")
            st.value = cache[rule.arm][rule.metric]
            if rule.holds(st.value):
                if st.pending_since is None:
                    st.pending_since = now
                if st.state != "firing":
                    if (now - st.pending_since).total_seconds() >= rule.duration_s:
                        st.state, st.fired_at = "firing", now
                        self._notify(st, "firing", now)
                    else:
                        st.state = "pending"
            else:
                if st.state == "firing":
                    self._notify(st, "resolved", now)
                st.state, st.pending_since, st.fired_at = "ok", None, None
        return list(self.states.values())

    def firing(self) -> list[AlertState]:
        return [s for s in self.states.values() if s.state == "firing"]

    def reset(self) -> None:
        self.states = {r.name: AlertState(r) for r in self.rules}

    def _notify(self, st: AlertState, state: str, now: datetime) -> None:
        from swarm import migration as mig

        detail = {**st.as_dict(), "state": state, "at": now.isoformat()}
        if state == "firing":
            log.warning(
                "alert.firing",
                alert=st.rule.name,
                severity=st.rule.severity,
                value=st.value,
                condition=st.rule.condition,
            )
        else:
            log.info("alert.resolved", alert=st.rule.name)
        self.db.run(lambda c: mig.event(c, self.migration_id, "alert", **detail), what="alert_event")
        if self.webhook_url:
            post_webhook(self.webhook_url, {"migration": self.migration_id, **detail})


def post_webhook(url: str, payload: dict[str, Any], *, timeout: float = 5.0) -> bool:
    """POST ``payload`` as JSON; a failure is logged, never raised (an alert must not stop the rollout)."""
    body = json.dumps(payload, default=str).encode("utf-8")
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (the operator's own URL)
            ok = 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError) as e:
        log.warning("alert.webhook_failed", error=type(e).__name__)
        return False
    if not ok:
        log.warning("alert.webhook_status", status=resp.status)
    return ok


def firing(conn: psycopg.Connection, migration_id: int | None = None) -> list[dict[str, Any]]:
    """Alerts whose last recorded transition is ``firing`` (for ``status``), newest first."""
    from swarm.store.db import one

    if one(conn.execute("SELECT to_regclass('swarm.events')").fetchone(), "to_regclass('swarm.events')")[0] is None:
        return []
    rows = conn.execute(
        "SELECT DISTINCT ON (detail->>'name') detail FROM swarm.events WHERE kind = 'alert' "
        "AND (%s::bigint IS NULL OR migration_id = %s) ORDER BY detail->>'name', id DESC",
        [migration_id, migration_id],
    ).fetchall()
    out = [r[0] for r in rows if r[0].get("state") == "firing"]
    return sorted(out, key=lambda d: d.get("at") or "", reverse=True)
