"""Alert rules: the seed's file parses, bad rules are refused with the key, rules fire only after their
duration over metrics the router really recorded, and a firing alert reaches ``swarm.events`` and the
webhook."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from swarm.core.errors import ConfigError
from swarm.serving.alerts import AlertEvaluator, firing, load_rules, parse_rules
from tests.test_router import Migrated, migrated, quality_root  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]


def test_the_seed_rules_parse_with_their_units() -> None:
    rules = {r.name: r for r in load_rules(REPO / "configs" / "alerts.yaml")}
    lat = rules["high_embedding_latency"]
    assert (lat.metric, lat.op, lat.threshold, lat.duration_s, lat.severity) == (
        "p95_latency",
        ">",
        50.0,
        300.0,
        "warning",
    )
    cache = rules["low_cache_hit_rate"]
    assert (cache.metric, cache.op, cache.threshold, cache.duration_s, cache.severity) == (
        "cache_hit_rate",
        "<",
        0.7,
        600.0,
        "info",
    )
    more = parse_rules(
        {
            "alerts": [
                {
                    "name": "errors",
                    "condition": "error_rate > 0.1%",
                    "duration": "30s",
                    "severity": "critical",
                    "arm": "new",
                },
                {"name": "slow", "condition": "p99_latency >= 0.25s", "duration": "1h"},
            ]
        }
    )
    assert (more[0].threshold, more[0].duration_s, more[0].arm, more[0].rolls_back) == (
        0.001,
        30.0,
        "new",
        True,
    )
    assert (more[1].threshold, more[1].duration_s, more[1].severity, more[1].rolls_back) == (
        250.0,
        3600.0,
        "warning",
        False,
    )


@pytest.mark.parametrize(
    ("rule", "key", "hint"),
    [
        (
            {"name": "x", "condition": "p95_latncy > 50ms"},
            "alerts[0].condition",
            "unknown metric 'p95_latncy'",
        ),
        ({"name": "x", "condition": "p95_latency > 5%"}, "alerts[0].condition", "ms or s"),
        ({"name": "x", "condition": "error_rate > 2"}, "alerts[0].condition", "between 0 and 1"),
        (
            {"name": "x", "condition": "p95_latency > 50ms", "duration": "5 minutes"},
            "alerts[0].duration",
            "30s",
        ),
        (
            {"name": "x", "condition": "p95_latency > 50ms", "severity": "page"},
            "alerts[0].severity",
            "critical",
        ),
        ({"name": "x", "condition": "p95_latency > 50ms", "for": "5m"}, "alerts[0].for", "unknown key"),
        ({"condition": "p95_latency > 50ms"}, "alerts[0].name", "needs a name"),
    ],
)
def test_a_bad_rule_is_refused_naming_its_key(rule: dict[str, Any], key: str, hint: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_rules({"alerts": [rule]}, "alerts.yaml")
    assert e.value.key == f"alerts.yaml: {key}"
    assert hint in e.value.hint


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802
        _Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_a_rule_fires_only_after_holding_for_its_duration(migrated: Migrated) -> None:  # noqa: F811
    from swarm.serving.router import Router

    hook = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    _Hook.received = []
    rules = parse_rules(
        {
            "alerts": [
                # Every real search takes more than a microsecond: holds whenever there is traffic.
                {
                    "name": "slow_search",
                    "condition": "p95_latency > 0.001ms",
                    "duration": "2m",
                    "severity": "warning",
                },
                {"name": "never", "condition": "p95_latency > 100s", "duration": "0s"},
            ]
        }
    )
    router = Router(migrated.cfg, migrated.dsn)
    for i, text in enumerate(migrated.queries()[:10]):
        router.search(text, caller=f"alert-{i}")
    router.close()
    db = migrated.db()
    ev = AlertEvaluator(
        rules,
        db,
        migration_id=migrated.mid,
        webhook_url=f"http://127.0.0.1:{hook.server_port}/hook",
        lookback_s=600,
    )
    t0 = ev.now()
    states = {s.rule.name: s for s in ev.evaluate(t0)}
    assert states["slow_search"].state == "pending" and states["slow_search"].value > 0.001
    assert states["never"].state == "ok"
    assert ev.evaluate(t0 + timedelta(seconds=119))[0].state == "pending"
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        assert firing(c, migrated.mid) == []
    assert _Hook.received == []

    assert ev.evaluate(t0 + timedelta(seconds=120))[0].state == "firing"
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        shown = firing(c, migrated.mid)
    assert [a["name"] for a in shown] == ["slow_search"]
    assert shown[0]["severity"] == "warning" and shown[0]["condition"] == "p95_latency > 0.001ms"
    assert [(h["name"], h["state"], h["migration"]) for h in _Hook.received] == [
        ("slow_search", "firing", migrated.mid)
    ]

    # Ten minutes later the traffic is out of the window: nothing to measure, the alert resolves.
    assert ev.evaluate(t0 + timedelta(seconds=720))[0].state == "ok"
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        assert firing(c, migrated.mid) == []
    assert [h["state"] for h in _Hook.received] == ["firing", "resolved"]
    hook.shutdown()
    hook.server_close()


def test_a_condition_that_stops_holding_restarts_the_wait(migrated: Migrated) -> None:  # noqa: F811
    from swarm.serving.router import Router

    rules = parse_rules([{"name": "busy", "condition": "queries >= 5", "duration": "60s"}])
    ev = AlertEvaluator(rules, migrated.db(), migration_id=migrated.mid, lookback_s=600)
    router = Router(migrated.cfg, migrated.dsn)
    for i in range(5):
        router.search(migrated.queries()[0], caller=f"busy-{i}")
    router.close()
    t0 = ev.now()
    assert ev.evaluate(t0)[0].state == "pending"
    # An evaluation whose window holds none of that traffic (the record is per minute: a window that starts a
    # minute later): the condition broke.
    assert ev.evaluate(t0 + timedelta(seconds=90), since=t0 + timedelta(seconds=61))[0].state == "ok"
    # Held again from t0+150 s: 150 s after it first held, but only 0 s since it holds without a break.
    assert ev.evaluate(t0 + timedelta(seconds=150))[0].state == "pending"
    assert ev.evaluate(t0 + timedelta(seconds=209))[0].state == "pending"
    assert ev.evaluate(t0 + timedelta(seconds=210))[0].state == "firing"


def test_error_rate_on_the_new_column_fires_an_alert(migrated: Migrated) -> None:  # noqa: F811
    from swarm.serving.rollout import set_percent
    from swarm.serving.router import Router

    set_percent(migrated.db(), migrated.migration(), 100)
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        c.execute("ALTER TABLE documents RENAME COLUMN nomic_embedding TO broken")
    router = Router(migrated.cfg, migrated.dsn)
    for i, text in enumerate(migrated.queries()[:5]):
        assert router.search(text, caller=f"err-{i}").fallback
    router.close()
    rules = parse_rules(
        [
            {
                "name": "new_errors",
                "condition": "error_rate > 0.1%",
                "duration": "0s",
                "severity": "critical",
                "arm": "new",
            },
            {"name": "legacy_errors", "condition": "error_rate > 0.1%", "duration": "0s", "arm": "legacy"},
        ]
    )
    states = {s.rule.name: s for s in AlertEvaluator(rules, migrated.db(), migration_id=migrated.mid).evaluate()}
    assert states["new_errors"].state == "firing" and states["new_errors"].value == 1.0
    assert states["legacy_errors"].state == "ok" and states["legacy_errors"].value == 0.0
