"""``swarm serve``: bounded connections under load (the quick load test), 503 when the pool is saturated, the
bearer token, ``/metrics``, and one clear line for every bad request.

The server runs in this process on 127.0.0.1 (port 0) around a real router, on a clone of the migrated demo
table; the clients are real HTTP clients on their own threads.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from bench.load import run_levels
from swarm.core.errors import UsageError
from swarm.serving.http import SearchServer, make_server
from swarm.serving.rollout import set_percent
from tests.test_router import REPO, Migrated, migrated, quality_root  # noqa: F401  (fixtures)


@contextmanager
def serving(m: Migrated, *, token: str | None = None, **serving_cfg: Any) -> Iterator[SearchServer]:
    server = make_server(m.config(serving=serving_cfg) if serving_cfg else m.cfg, m.dsn, port=0, token=token)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.close()


def request(
    server: SearchServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(str(host), int(port), timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def search(server: SearchServer, body: dict[str, Any], token: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    status, _, data = request(server, "POST", "/search", json.dumps(body).encode(), headers)
    return status, json.loads(data)


def connections(dsn: str, application_name: str) -> int:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        return int(
            c.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [application_name]
            ).fetchone()[0]
        )


def test_load_at_1_8_32_128_clients_stays_within_the_pool_without_errors(migrated: Migrated) -> None:  # noqa: F811
    """The quick load test (``make bench`` runs it bigger): every level answers without an error (503s would be
    counted apart), and the server never holds more database connections than ``serving.pool_size``, where it
    used to open one per request thread until PostgreSQL refused them all."""
    set_percent(migrated.db(), migrated.migration(), 50)
    queries = migrated.queries()
    with serving(migrated) as server:
        pool = server.router.pool.max_size
        assert pool == migrated.cfg.serving.pool_size == 4
        levels = run_levels(
            server.url,
            migrated.dsn,
            server.router.application_name,
            queries,
            levels=(1, 8, 32, 128),
            requests=(40, 80, 96, 128),
        )
        served = {a: n for a, n in server.router.recorder.live.snapshot()["requests"].items() if n}
    seen = {lv.clients: lv.as_dict() for lv in levels}
    assert all(lv.errors == 0 for lv in levels), seen
    assert all(lv.ok + lv.shed == lv.requests for lv in levels), seen
    assert max(lv.max_connections for lv in levels) <= pool, seen
    assert all(lv.max_connections >= 1 for lv in levels), seen  # the sampler saw the server's connections
    assert set(served) == {"legacy", "new"}  # both arms served (share 50%)


def test_a_saturated_pool_answers_503_and_opens_nothing_more(migrated: Migrated) -> None:  # noqa: F811
    """With the only connection of a one-connection pool held, searches wait ``pool_timeout_s`` and get 503
    with Retry-After (counted as shed in /metrics, not as errors); released, they are answered again."""
    with serving(migrated, pool_size=1, pool_min=1, pool_timeout_s=0.3) as server:
        assert search(server, {"query": migrated.queries()[0], "caller": "warm"})[0] == 200
        app = server.router.application_name
        with server.router.pool.connection():
            statuses = []
            for i in range(6):
                status, _, data = request(
                    server,
                    "POST",
                    "/search",
                    json.dumps({"query": migrated.queries()[i], "caller": f"busy-{i}"}).encode(),
                    {"Content-Type": "application/json"},
                )
                statuses.append((status, json.loads(data)["error"]))
            held = connections(migrated.dsn, app)
        assert [s for s, _ in statuses] == [503] * 6
        assert "no database connection free within 0.3 s" in statuses[0][1] and "\n" not in statuses[0][1]
        assert held == 1
        assert search(server, {"query": migrated.queries()[0], "caller": "after"})[0] == 200
        _, _, metrics = request(server, "GET", "/metrics")
    text = metrics.decode()
    assert "swarm_search_shed_total 6" in text
    assert 'swarm_http_responses_total{code="503"} 6' in text
    assert 'swarm_search_errors_total{arm="legacy"} 0' in text


def test_metrics_in_prometheus_format(migrated: Migrated) -> None:  # noqa: F811
    set_percent(migrated.db(), migrated.migration(), 100)
    with serving(migrated) as server:
        for i in range(3):
            assert search(server, {"query": migrated.queries()[i], "caller": f"m-{i}"})[0] == 200
        status, headers, data = request(server, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = data.decode().splitlines()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if not line.startswith("#")}
    assert samples['swarm_search_requests_total{arm="new"}'] == 3
    assert samples['swarm_search_errors_total{arm="new"}'] == 0
    assert samples['swarm_search_latency_seconds_count{arm="new"}'] == 3
    assert samples['swarm_search_latency_seconds_bucket{arm="new",le="+Inf"}'] == 3
    buckets = [v for k, v in samples.items() if k.startswith('swarm_search_latency_seconds_bucket{arm="new"')]
    assert buckets == sorted(buckets)  # cumulative
    assert samples['swarm_search_latency_seconds_sum{arm="new"}'] > 0
    assert samples[f'swarm_rollout_share_percent{{migration="{migrated.mid}"}}'] == 100
    assert samples["swarm_pool_max_connections"] == 4
    assert 1 <= samples["swarm_pool_connections"] <= 4
    assert "# TYPE swarm_search_latency_seconds histogram" in lines


def test_the_token_is_required_and_compared_whole(migrated: Migrated) -> None:  # noqa: F811
    token = "s3cret-token"
    with serving(migrated, token=token) as server:
        body = {"query": migrated.queries()[0], "caller": "t"}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer s3cret"}):
            status, got, data = request(server, "POST", "/search", json.dumps(body).encode(), headers)
            assert status == 401, headers
            assert got["www-authenticate"].startswith("Bearer")
            assert json.loads(data) == {"error": "missing or wrong bearer token; send Authorization: Bearer <token>"}
        assert request(server, "GET", "/metrics")[0] == 401
        assert request(server, "GET", "/health", headers={"Authorization": f"Bearer {token}"})[0] == 200
        assert search(server, body, token=token)[0] == 200


def test_serve_refuses_a_public_address_without_a_token(migrated: Migrated, tmp_path: Any) -> None:  # noqa: F811
    with pytest.raises(UsageError, match="not a loopback address and no token is set"):
        make_server(migrated.cfg, migrated.dsn, host="0.0.0.0", port=0)
    out = subprocess.run(
        [sys.executable, "-m", "swarm", "-c", str(migrated.root / "configs" / "test.toml"), "serve", "--host",
         "0.0.0.0", "--port", "0"],
        capture_output=True, text=True, cwd=REPO, timeout=120, env={**_env(), "SWARM_SERVE_TOKEN": ""},
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: --host 0.0.0.0 is not a loopback address and no token is set: anyone who reaches it could "
        "search; pass --token or set SWARM_SERVE_TOKEN"
    ]


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(REPO)}


BAD = [
    (b"{not json", {}, 400, "the body is not JSON"),
    (b"[1, 2]", {}, 400, "expected a JSON object"),
    (b'{"query": "x", "kk": 3}', {}, 400, "unknown key 'kk'; use query, k, caller, where, columns"),
    (b'{"query": 3}', {}, 400, "query must be a string"),
    (b'{"query": "x", "k": "ten"}', {}, 400, "k = 'ten': must be an integer"),
    (b'{"query": "x", "k": 0}', {}, 400, "k = 0: must be between 1 and 1000"),
    (b'{"query": "   "}', {}, 400, "the query is empty"),
    (b'{"query": "x", "where": {"nope": 1}}', {}, 400, "no column 'nope' in documents; columns: content"),
    (b'{"query": "x", "where": {"name": {"a": 1}}}', {}, 400, "where.name = {'a': 1}: must be a string"),
    (b'{"query": "x", "columns": "name"}', {}, 400, "columns = 'name': must be a list of column names"),
    (b'{"query": "x"}', {"Content-Length": str(10 * 2**20)}, 413, "body of 10485760 bytes; at most 65536"),
]


def test_a_bad_request_gets_its_status_and_one_line(migrated: Migrated) -> None:  # noqa: F811
    got = []
    with serving(migrated) as server:
        for body, headers, _, _ in BAD:
            status, _, data = request(server, "POST", "/search", body, {"Content-Type": "application/json", **headers})
            got.append((status, json.loads(data)["error"]))
        # The server is still there and answers the next request.
        assert search(server, {"query": migrated.queries()[0], "caller": "next"})[0] == 200
    for (body, _, status, says), (status_got, error) in zip(BAD, got, strict=True):
        assert status_got == status, (body, error)
        assert says in error and "\n" not in error, (body, error)


def test_a_request_without_a_length_gets_411(migrated: Migrated) -> None:  # noqa: F811
    with serving(migrated) as server:
        host, port = server.server_address[:2]
        conn = http.client.HTTPConnection(str(host), int(port), timeout=30)
        conn.putrequest("POST", "/search")
        conn.putheader("Content-Type", "application/json")
        conn.endheaders()
        resp = conn.getresponse()
        error = json.loads(resp.read())["error"]
        conn.close()
    assert resp.status == 411 and error == "no Content-Length; send the JSON body with its length"
