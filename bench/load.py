"""``load_errors`` and ``load_max_connections``: ``swarm serve`` on 127.0.0.1 under 1, 8, 32 and 128 concurrent
clients, a few hundred searches at each level.

Each client is a thread with its own keep-alive HTTP connection, sending ``POST /search`` one after the other
(caller keys spread over the share, so both arms serve). Meanwhile a sampler counts the server's database
connections in ``pg_stat_activity`` (by its ``application_name``) every 10 ms. Reported per level: p50/p95 of
the client-side latency, 200s, 503s (shed: no connection free within ``serving.pool_timeout_s``; counted
apart, they are the pool doing its job), errors (anything else, a transport error included), the most
connections seen. Targets: no errors at any level; never more connections than ``serving.pool_size``.

The measurement (:func:`run_levels`) is also what the quick test in ``tests/test_http.py`` runs, at smaller sizes.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from bench.results import Result, Target, percentile
from swarm.core.errors import UsageError
from swarm.core.log import get_logger

log = get_logger()

LEVELS = (1, 8, 32, 128)


@dataclass
class Level:
    """One concurrency level of the load test."""

    clients: int
    requests: int
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    max_connections: int = 0
    first_error: str | None = None

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def shed(self) -> int:
        return self.statuses.get(503, 0)

    @property
    def errors(self) -> int:
        return self.transport_errors + sum(n for s, n in self.statuses.items() if s not in (200, 503))

    def p(self, q: float) -> float | None:
        return percentile(self.latencies_ms, q) if self.latencies_ms else None

    def as_dict(self) -> dict[str, Any]:
        p50, p95 = self.p(50), self.p(95)
        return {
            "clients": self.clients,
            "requests": self.requests,
            "ok": self.ok,
            "shed_503": self.shed,
            "errors": self.errors,
            "statuses": dict(self.statuses),
            "p50_ms": round(p50, 2) if p50 is not None else None,
            "p95_ms": round(p95, 2) if p95 is not None else None,
            "seconds": round(self.seconds, 2),
            "requests_per_second": round(self.requests / self.seconds, 1) if self.seconds else None,
            "max_connections": self.max_connections,
            "first_error": self.first_error,
        }


class ConnectionSampler(threading.Thread):
    """The most connections ``application_name`` held at once, polled from ``pg_stat_activity``."""

    def __init__(self, dsn: str, application_name: str, *, interval: float = 0.01) -> None:
        super().__init__(name="swarm-load-sampler", daemon=True)
        self.dsn, self.application_name, self.interval = dsn, application_name, interval
        self.max = 0
        self.samples = 0
        self._stop_event = threading.Event()
        self._ready = threading.Event()

    def run(self) -> None:
        from swarm.store.db import connect, one

        with connect(self.dsn, application_name="swarm:load-sampler") as conn:
            self._ready.set()
            while not self._stop_event.is_set():
                n = one(
                    conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [self.application_name]
                    ).fetchone(),
                    "the count of the server's connections",
                )[0]
                self.max, self.samples = max(self.max, int(n)), self.samples + 1
                self._stop_event.wait(self.interval)

    def start(self) -> None:
        super().start()
        self._ready.wait(15)

    def reset(self) -> None:
        self.max = 0

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


def drive(
    url: str,
    queries: Sequence[str],
    *,
    clients: int,
    requests: int,
    token: str | None = None,
    k: int = 10,
    timeout: float = 60.0,
) -> Level:
    """``requests`` searches from ``clients`` concurrent keep-alive clients; returns what they saw."""
    parts = urlsplit(url)
    host = parts.hostname
    if host is None:  # before the clients start: a client that cannot connect would leave the others waiting
        raise UsageError(f"{url}: no host in the URL")
    level = Level(clients, requests)
    lock = threading.Lock()
    counter = iter(range(requests))
    start = threading.Barrier(clients + 1)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"

    def client(n: int) -> None:
        conn = http.client.HTTPConnection(host, parts.port, timeout=timeout)
        start.wait()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            body = json.dumps({"query": queries[i % len(queries)], "k": k, "caller": f"load-{i}"})
            t = time.perf_counter()
            try:
                conn.request("POST", "/search", body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                ms = (time.perf_counter() - t) * 1000
                with lock:
                    level.statuses[resp.status] += 1
                    if resp.status == 200:
                        level.latencies_ms.append(ms)
                    elif resp.status != 503 and level.first_error is None:
                        level.first_error = f"{resp.status}: {data[:200].decode('utf-8', 'replace')}"
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException) as e:
                with lock:
                    level.transport_errors += 1
                    level.first_error = level.first_error or f"{type(e).__name__}: {e}"
                conn.close()
        conn.close()

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for th in threads:
        th.start()
    start.wait()
    t0 = time.perf_counter()
    for th in threads:
        th.join()
    level.seconds = time.perf_counter() - t0
    return level


def run_levels(
    url: str,
    dsn: str,
    application_name: str,
    queries: Sequence[str],
    *,
    levels: Sequence[int] = LEVELS,
    requests: int | Sequence[int] = 300,
    token: str | None = None,
) -> list[Level]:
    """Each level in turn (``requests`` per level, or one count per level), with the connection count sampled."""
    per_level = [requests] * len(levels) if isinstance(requests, int) else list(requests)
    sampler = ConnectionSampler(dsn, application_name)
    sampler.start()
    out = []
    try:
        for clients, n in zip(levels, per_level, strict=True):
            sampler.reset()
            level = drive(url, queries, clients=clients, requests=max(n, clients), token=token)
            time.sleep(0.05)  # one more sample after the last response
            level.max_connections = sampler.max
            out.append(level)
            log.info("load.level", **level.as_dict())
    finally:
        sampler.stop()
    return out


def summary(levels: Sequence[Level]) -> str:
    """``1: p50 4.1 / p95 7.9 ms, 300 ok, 0 503, 0 errors, 2 conns; 8: ...``."""

    def ms(v: float | None) -> str:
        return f"{v:.1f}" if v is not None else "-"

    return "; ".join(
        f"{lv.clients}: p50 {ms(lv.p(50))} / p95 {ms(lv.p(95))} ms, {lv.ok} ok, {lv.shed} 503, {lv.errors} errors, "
        f"{lv.max_connections} conns"
        for lv in levels
    )


def fig_load(lab: Any) -> list[Result]:
    """The load test against a migrated table at 50% rollout (the pipeline figure's when it ran, else one
    migrated for this figure)."""
    import threading as _threading

    from bench.lab import create_docs_table, orchestrate_timed
    from swarm import commands
    from swarm.core.errors import SwarmError
    from swarm.serving.http import make_server

    s = lab.sizes
    shared = lab.shared.get("pipeline")
    docs = lab.docs()
    if shared is not None:
        dsn, cfg, source = shared["dsn"], shared["cfg"], "the pipeline figure's migrated table"
    else:
        n = s.load_rows
        dsn = lab.database("bench_load")
        create_docs_table(dsn, "documents", [(d.id, d.content) for d in docs[:n]])
        cfg = lab.config(dsn, "documents")
        lab.kill_swarm()
        run = orchestrate_timed(cfg, "bench: load", before=lambda: commands.init(cfg))
        if run.code != 0:
            raise SwarmError(f"the migration ended with exit code {run.code}: {run.status.get('reason')}")
        source = f"a {n}-row migrated table"
    lab.kill_swarm()  # the swarm's migrators would share the two cores with the server
    commands.rollout(cfg, percent=50)
    queries = [d.query for d in docs if d.query][:500]
    server = make_server(cfg, dsn, port=0)
    app = server.router.application_name
    th = _threading.Thread(target=server.serve_forever, daemon=True)
    th.start()
    try:
        # Load both models (on first use) and put every query in their caches: the levels then compare the
        # serving path (HTTP, routing, the pool, the SQL) at each concurrency, not the first level's cache
        # misses (the model's own speed is the embed figure's).
        drive(server.url, queries, clients=4, requests=min(len(queries), s.load_requests))
        levels = run_levels(server.url, dsn, app, queries, levels=LEVELS, requests=s.load_requests)
    finally:
        server.shutdown()
        server.close()
    pool = cfg.serving.pool_size
    errors = sum(lv.errors for lv in levels)
    conns = max(lv.max_connections for lv in levels)
    notes = (
        f"swarm serve on 127.0.0.1, {source}, share 50%, queries warm in the embedders' caches, pool_size {pool}, "
        "pool_timeout "
        f"{cfg.serving.pool_timeout_s:g} s, {s.load_requests} searches per level (clients: client-side p50/p95): "
        + summary(levels)
    )
    details = {"levels": [lv.as_dict() for lv in levels], "pool_size": pool, "source": source}
    return [
        Result("load_errors", float(errors), "errors", Target("<=", 0), notes=notes, details=details),
        Result(
            "load_max_connections",
            float(conns),
            "connections",
            Target("<=", 1.0, "ratio"),
            baseline=float(pool),
            baseline_label="serving.pool_size",
            ratio=conns / pool,
            ratio_label="connections / pool size",
            notes=f"most connections of the server seen in pg_stat_activity over all levels; 503s (shed): "
            f"{sum(lv.shed for lv in levels)}",
            details=details,
        ),
    ]
