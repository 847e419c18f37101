"""The router: the share from the database, sticky callers, the kill switch, per-arm records, HTTP.

The table under test is real: the demo corpus seeded with legacy MiniLM f16 vectors and migrated to the Q8_0
GGUF by the real coordinator, migrator and validator classes (in-process, without Ray). It is built once per
session as a template database and cloned for every test (``CREATE DATABASE ... TEMPLATE``), so each test gets
a fresh database in a fraction of a second. The helpers are imported by the other quality test modules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from swarm import migration as mig
from swarm.core.config import Config, load_config
from swarm.store.db import Database
from tests.support.runner import run_in_process

REPO = Path(__file__).resolve().parents[1]
TEMPLATE_ROWS = 60
TEMPLATE_QUERIES = 30


# ------------------------------------------------------------------------------------------------------------
# Helpers shared by the quality tests
# ------------------------------------------------------------------------------------------------------------
def with_db(dsn: str, dbname: str) -> str:
    params: dict[str, Any] = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo(**params)


def _toml_value(v: Any) -> str:
    # JSON scalars, strings and lists of them are valid TOML.
    return json.dumps(v)


def write_config(root: Path, dsn: str, **sections: dict[str, Any]) -> Config:
    """A TOML config under ``root/configs`` for ``dsn``, the repo's MiniLM GGUFs, a small swarm; loaded."""
    base: dict[str, dict[str, Any]] = {
        "database": {"dsn": dsn},
        "embedding": {
            "model": "all-MiniLM-L6-v2-Q8_0",
            "model_path": str(REPO / "model/all-MiniLM-L6-v2.Q8_0.gguf"),
        },
        "legacy": {"model_path": str(REPO / "model/all-MiniLM-L6-v2.f16.gguf")},
        "swarm": {"migrators": 1, "validators": 1, "shard_rows": 25},
        # Latency is not what these tests check (timings live in the benchmark): a loaded CI machine must not
        # trip the 50 ms gate.
        "validation": {"queries": str(root / "queries.jsonl"), "max_p95_latency_ms": 60_000},
        "rollout": {"alerts": str(root / "alerts.yaml"), "window_seconds": 1.0, "queries_per_step": 40},
    }
    for k, v in sections.items():
        base.setdefault(k, {}).update(v)
    (root / "configs").mkdir(parents=True, exist_ok=True)
    p = root / "configs" / "test.toml"
    text = "config_version = 1\n" + "".join(
        f"\n[{sec}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in vals.items()) for sec, vals in base.items()
    )
    p.write_text(text)
    return load_config(p)


@dataclass(frozen=True)
class Template:
    name: str
    root: Path
    migration_id: int
    legacy_checksum: str


_TEMPLATES: dict[str, Template] = {}
_LOCK = threading.Lock()


def migrated_template(admin_dsn: str, root: Path) -> Template:
    """The seeded and migrated database, built once per session (completed, validated, rollout at 0%)."""
    with _LOCK:
        if admin_dsn in _TEMPLATES:
            return _TEMPLATES[admin_dsn]
        name = f"tpl_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        dsn = with_db(admin_dsn, name)
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE EXTENSION IF NOT EXISTS vector")
        cfg = write_config(root, dsn)
        from swarm.ops.demo import seed

        seed(cfg, limit=TEMPLATE_ROWS, n_queries=TEMPLATE_QUERIES, progress=False)
        run = run_in_process(cfg, dsn, migrators=1, validators=1, close=True)
        result, mid = run.result, run.migration.id
        assert result["state"] == "completed", result
        with psycopg.connect(dsn, autocommit=True) as c:
            checksum = mig.legacy_checksum(c, mig.load(c, mid).target)
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name])
        _TEMPLATES[admin_dsn] = Template(name, root, mid, checksum)
        return _TEMPLATES[admin_dsn]


@dataclass
class Migrated:
    """A fresh clone of the template for one test."""

    cfg: Config
    dsn: str
    mid: int
    legacy_checksum: str
    root: Path

    def db(self) -> Database:
        return Database(self.dsn)

    def config(self, **sections: dict[str, Any]) -> Config:
        """The same database with other settings (and the current environment)."""
        return write_config(self.root, self.dsn, validation={"queries": str(self.queries_file)}, **sections)

    @property
    def queries_file(self) -> Path:
        return Path(self.cfg.validation.queries)

    def queries(self) -> list[str]:
        return [json.loads(line)["query"] for line in self.queries_file.read_text().splitlines() if line.strip()]

    def migration(self) -> mig.Migration:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            return mig.load(c, self.mid)


@pytest.fixture(scope="session")
def quality_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("quality-template")


@pytest.fixture()
def migrated(
    pg_server_dsn: str, quality_root: Path, tmp_path: Path, minilm_f16: Path, minilm_q8: Path
) -> Iterator[Migrated]:
    """A fresh database holding a completed migration of a 60-row demo table (share 0%)."""
    tpl = migrated_template(pg_server_dsn, quality_root)
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{tpl.name}"')
    dsn = with_db(pg_server_dsn, name)
    (tmp_path / "alerts.yaml").write_text("alerts: []\n")
    cfg = write_config(tmp_path, dsn, validation={"queries": str(tpl.root / "queries.jsonl")})
    yield Migrated(cfg, dsn, tpl.migration_id, tpl.legacy_checksum, tmp_path)
    with psycopg.connect(pg_server_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def arm_counts(dsn: str, source: str | None = None, *, errors: bool = False) -> dict[str, int]:
    """Searches (or, with ``errors``, failed searches) per arm in the search record (``swarm.query_rollup``)."""
    what = "errors" if errors else "queries"
    with psycopg.connect(dsn, autocommit=True) as c:
        return {
            arm: int(n)
            for arm, n in c.execute(
                f"SELECT arm, sum({what}) FROM swarm.query_rollup WHERE %s::text IS NULL OR source = %s GROUP BY arm",
                [source, source],
            ).fetchall()
            if n
        }


# ------------------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------------------
def test_split_follows_the_share_within_tolerance_over_1200_queries(migrated: Migrated) -> None:
    from swarm.serving.rollout import set_percent
    from swarm.serving.router import Router

    set_percent(migrated.db(), migrated.migration(), 25)
    router = Router(migrated.cfg, migrated.dsn)
    texts = migrated.queries()
    n = 1200
    answered = 0
    for i in range(n):
        r = router.search(texts[i % len(texts)], k=5, caller=f"user-{i}")
        answered += len(r.ids) == 5
    router.close()
    counts = arm_counts(migrated.dsn)
    assert sum(counts.values()) == n  # every query recorded, once
    # Binomial(1200, 0.25): mean 300, sd 15. Four sd either side.
    assert 240 <= counts.get("new", 0) <= 360, counts
    assert answered == n  # every query got its k results, from either arm


def test_caller_is_sticky_across_processes_and_stays_on_new_as_the_share_grows(migrated: Migrated) -> None:
    from swarm.serving.rollout import set_percent
    from swarm.serving.router import Router

    db = migrated.db()
    set_percent(db, migrated.migration(), 25)
    text = migrated.queries()[0]
    callers = [f"sticky-{i}" for i in range(120)]
    first = Router(migrated.cfg, migrated.dsn)
    second = Router(migrated.cfg, migrated.dsn, source="serve")  # another front end, same share
    arms = {c: first.search(text, caller=c).arm for c in callers}
    assert {c: second.search(text, caller=c).arm for c in callers} == arms
    assert 0 < sum(a == "new" for a in arms.values()) < len(callers)

    # Another Python process, with another hash seed, routes the same callers the same way.
    code = (
        "import json, sys; from swarm.serving.router import choose_arm; "
        "print(json.dumps({c: choose_arm(c, 25.0) for c in json.loads(sys.argv[1])}))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(callers)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env=env,
    )
    assert json.loads(out.stdout) == arms

    set_percent(db, migrated.migration(), 50)
    first.share(refresh=True)
    grown = {c: first.search(text, caller=c).arm for c in callers}
    assert all(grown[c] == "new" for c, a in arms.items() if a == "new")
    assert sum(a == "new" for a in grown.values()) > sum(a == "new" for a in arms.values())
    first.close()
    second.close()


def test_environment_flag_sends_every_query_to_legacy(migrated: Migrated, monkeypatch: pytest.MonkeyPatch) -> None:
    from swarm.serving.rollout import set_percent
    from swarm.serving.router import Router

    set_percent(migrated.db(), migrated.migration(), 100)
    text = migrated.queries()[1]
    on = Router(migrated.cfg, migrated.dsn)
    assert {on.search(text, caller=f"on-{i}").arm for i in range(50)} == {"new"}
    on.close()
    assert arm_counts(migrated.dsn) == {"new": 50}

    monkeypatch.setenv("USE_NOMIC_EMBEDDINGS", "false")
    cfg = migrated.config()
    assert cfg.rollout.use_new is False
    off = Router(cfg, migrated.dsn)
    results = [off.search(text, caller=f"off-{i}") for i in range(50)]
    off.close()
    assert {r.arm for r in results} == {"legacy"}
    assert all(r.ids for r in results)
    assert arm_counts(migrated.dsn) == {"new": 50, "legacy": 50}


def test_share_change_reaches_a_running_router_within_its_ttl(migrated: Migrated) -> None:
    import time

    from swarm.serving.rollout import set_percent
    from swarm.serving.router import Router

    router = Router(migrated.cfg, migrated.dsn, share_ttl=0.2)
    text = migrated.queries()[2]
    assert router.search(text, caller="ttl").arm == "legacy"  # share 0%
    set_percent(migrated.db(), migrated.migration(), 100)
    time.sleep(0.3)
    assert router.search(text, caller="ttl").arm == "new"
    router.close()


def test_failure_on_the_new_column_is_answered_from_legacy_and_recorded(migrated: Migrated) -> None:
    from swarm.serving.rollout import set_percent
    from swarm.serving.router import Router

    set_percent(migrated.db(), migrated.migration(), 100)
    m = migrated.migration()
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        # The new column disappears under the router (someone ran a bad DDL).
        c.execute(f'ALTER TABLE documents RENAME COLUMN "{m.target.new_column}" TO broken')
    router = Router(migrated.cfg, migrated.dsn)
    r = router.search(migrated.queries()[3], k=5, caller="victim")
    router.close()
    assert r.arm == "legacy" and r.fallback and len(r.ids) == 5
    assert "UndefinedColumn" in r.errors["new"]
    # On record: one search on each arm, the new one failed.
    assert arm_counts(migrated.dsn) == {"new": 1, "legacy": 1}
    assert arm_counts(migrated.dsn, errors=True) == {"new": 1}


def test_configured_probes_reach_each_search_on_the_new_column_and_no_further(migrated: Migrated) -> None:
    """``[swarm].probes`` is SET LOCAL in each new-arm search. With an ivfflat index of 30 lists on the 60-row
    column, pgvector's default (1 probe) searches one list and misses most of the true top 10; the configured
    30 probes search them all and return exactly what exact search returns. The setting ends with the search."""
    from swarm.serving.rollout import set_percent

    set_percent(migrated.db(), migrated.migration(), 100)
    m = migrated.migration()
    text = migrated.queries()[4]
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        c.execute(m.target.drop_index(m.id))
        c.execute(m.target.create_index(m.id, "ivfflat", "vector_cosine_ops", 30))
        # pgvector 0.8 costs an ivfflat scan of a 60-row table above a seq scan; this test is about the setting
        # reaching the index, so the routers' sessions (opened below) are kept off seq scans.
        db = sql.Identifier(c.execute("SELECT current_database()").fetchone()[0])
        c.execute(sql.SQL("ALTER DATABASE {} SET enable_seqscan = off").format(db))
    try:
        _probes_reach_the_index(migrated, m, text)
    finally:
        with psycopg.connect(migrated.dsn, autocommit=True) as c:
            c.execute(sql.SQL("ALTER DATABASE {} RESET enable_seqscan").format(db))


def _probes_reach_the_index(migrated: Migrated, m: Any, text: str) -> None:
    from pgvector.psycopg import register_vector

    from swarm.serving.router import Router

    # One pooled connection: the session the search ran on is the one looked at afterwards.
    one_conn = {"pool_size": 1, "pool_min": 1}
    wide = Router(migrated.config(swarm={"probes": 30}, serving=one_conn), migrated.dsn)
    vec, _ = wide.arms["new"].embed(text)
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        register_vector(c)
        c.execute("SET enable_indexscan = off")
        c.execute("SET enable_seqscan = on")
        q = m.target.search(m.target.new_column, m.column_type, m.dimension)
        exact = [r[0] for r in c.execute(q, [vec, vec, 10]).fetchall()]
        c.execute("RESET enable_indexscan")
        c.execute("RESET enable_seqscan")
        assert m.target.index_name(m.id) in str(c.execute(sql.SQL("EXPLAIN ") + q, [vec, vec, 10]).fetchall())

    found = wide.search(text, k=10, caller="probes-30")
    assert found.arm == "new" and found.ids == exact
    # Only for that search: the router's session is back at pgvector's default.
    with wide.pool.connection() as c:
        assert c.execute("SHOW ivfflat.probes").fetchone()[0] == "1"
    wide.close()

    narrow = Router(migrated.config(swarm={"probes": 1}), migrated.dsn)
    one = narrow.search(text, k=10, caller="probes-1")
    narrow.close()
    assert one.arm == "new" and len(set(one.ids) & set(exact)) < 10


def test_hnsw_search_returns_k_rows_even_above_the_configured_ef_search(migrated: Migrated) -> None:
    """The swarm builds hnsw with the configured ``hnsw_m`` and ``hnsw_ef_construction`` and searches with
    ``ef_search`` raised to k: an hnsw scan returns at most ef_search rows, so without that a k = 50 search would
    get 10 rows here (and 40, pgvector's default, with no setting at all)."""
    from swarm.serving.rollout import set_percent
    from swarm.serving.router import Router

    set_percent(migrated.db(), migrated.migration(), 100)
    m = migrated.migration()
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        indexdef = c.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [m.index_name]).fetchone()[0]
        # On 60 rows the planner would rather sort them all for k = 50: make the router's sessions use the index.
        dbname = c.execute("SELECT current_database()").fetchone()[0]
        c.execute(sql.SQL("ALTER DATABASE {} SET enable_seqscan = off").format(sql.Identifier(dbname)))
    swarm = migrated.cfg.swarm
    assert "USING hnsw" in indexdef
    assert f"m='{swarm.hnsw_m}'" in indexdef and f"ef_construction='{swarm.hnsw_ef_construction}'" in indexdef

    router = Router(migrated.config(swarm={"ef_search": 10}, serving={"pool_size": 1, "pool_min": 1}), migrated.dsn)
    q = m.target.search(m.target.new_column, m.column_type, m.dimension)
    vec, _ = router.arms["new"].embed(migrated.queries()[5])
    with router.pool.connection() as c:
        plan = c.execute(sql.SQL("EXPLAIN ") + q, [vec, vec, 50]).fetchall()
    assert m.index_name in str(plan)
    r = router.search(migrated.queries()[5], k=50, caller="k-50")
    assert r.arm == "new" and len(r.ids) == len(set(r.ids)) == 50
    assert r.distances == sorted(r.distances)
    with router.pool.connection() as c:
        assert c.execute("SHOW hnsw.ef_search").fetchone()[0] == "40"
    router.close()


def test_http_endpoint_searches_and_reports_health(migrated: Migrated) -> None:
    from swarm.serving.http import make_server
    from swarm.serving.rollout import set_percent

    set_percent(migrated.db(), migrated.migration(), 100)
    server = make_server(migrated.cfg, migrated.dsn, port=0)
    assert server.server_address[0] == "127.0.0.1"
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:

        def post(body: bytes) -> tuple[int, dict[str, Any]]:
            req = urllib.request.Request(
                server.url + "/search", data=body, method="POST", headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    return resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        status, body = post(json.dumps({"query": migrated.queries()[4], "k": 3, "caller": "http-1"}).encode())
        assert status == 200
        assert body["arm"] == "new" and body["percent"] == 100 and len(body["results"]) == 3
        assert all(isinstance(hit["id"], str) and 0 <= hit["distance"] <= 2 for hit in body["results"])

        status, body = post(b"{not json")
        assert status == 400 and "not JSON" in body["error"] and "\n" not in body["error"]
        status, body = post(json.dumps({"query": "   "}).encode())
        assert status == 400 and "empty" in body["error"]

        with urllib.request.urlopen(server.url + "/health", timeout=10) as resp:
            health = json.loads(resp.read())
        assert health == {"status": "ok", "migration": migrated.mid, "percent": 100.0, "use_new": True}
    finally:
        server.shutdown()
        server.close()
    assert arm_counts(migrated.dsn, "serve") == {"new": 1}
