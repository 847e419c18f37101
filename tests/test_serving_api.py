"""The application's Python API: ``Router.from_config`` without a TOML file, ``arm(caller)`` without a model,
models loaded per arm actually used, filtered searches that still return k rows with the columns asked for,
and the async twin answering as the sync router does."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from psycopg import sql

from swarm.core.errors import UsageError
from swarm.serving.rollout import set_percent
from swarm.store.db import ServerInfo
from swarm.store.search import ITERATIVE_SCAN, build_search
from tests.test_router import Migrated, migrated, quality_root  # noqa: F401  (fixtures)


def _add_lang(dsn: str) -> dict[str, str]:
    """A filter column: every third row is ``py``; returns id -> lang."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("ALTER TABLE documents ADD COLUMN lang text")
        c.execute("UPDATE documents SET lang = CASE WHEN id % 3 = 0 THEN 'py' ELSE 'txt' END")
        return dict(c.execute("SELECT id::text, lang FROM documents").fetchall())


def _server(dsn: str) -> ServerInfo:
    with psycopg.connect(dsn, autocommit=True) as c:
        v = c.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
        return ServerInfo(c.info.server_version, v)


def test_from_a_dict_of_settings_arm_routes_without_a_toml_or_a_model(migrated: Migrated) -> None:  # noqa: F811
    from swarm import Router

    set_percent(migrated.db(), migrated.migration(), 50)
    router = Router.from_config({"database": {"dsn": migrated.dsn, "table": "documents"}})
    try:
        arms = {c: router.arm(c) for c in (f"app-{i}" for i in range(200))}
        assert not router.arms["legacy"].loaded and not router.arms["new"].loaded  # routing loads no model
    finally:
        router.close()
    new = [a for a in arms.values() if a.arm == "new"]
    legacy = [a for a in arms.values() if a.arm == "legacy"]
    assert 60 < len(new) < 140
    assert {(a.column, a.column_type, a.dimension, a.model) for a in new} == {
        ("nomic_embedding", "vector", 384, migrated.migration().model_id)
    }
    assert {(a.column, a.column_type, a.dimension) for a in legacy} == {("embedding", "vector", 384)}
    assert {a.migration_id for a in arms.values()} == {migrated.mid} and {a.percent for a in arms.values()} == {50}
    # The same answer from SQL, for an application that routes in its own queries.
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        sql_arms = dict(
            c.execute("SELECT k, a.arm FROM unnest(%s::text[]) k, swarm.arm('documents', k) a", [list(arms)]).fetchall()
        )
    assert sql_arms == {c: a.arm for c, a in arms.items()}


def test_models_load_per_arm_actually_used(migrated: Migrated) -> None:  # noqa: F811
    from swarm import Router

    router = Router.from_config(migrated.cfg)  # share 0%: every search on legacy
    try:
        r = router.search(migrated.queries()[0], k=3, caller="lazy")
        assert r.arm == "legacy" and len(r.ids) == 3
        assert router.arms["legacy"].loaded and not router.arms["new"].loaded
    finally:
        router.close()


def test_a_filtered_search_returns_k_rows_with_the_columns_asked_for(migrated: Migrated) -> None:  # noqa: F811
    """60 rows, an hnsw index searched with ef_search 10, a filter that keeps a third of the rows: the index
    scan alone finds about 3 of the 10. pgvector >= 0.8 scans on (iterative index scan); older pgvector (the
    embedded server's 0.6) gets the search repeated exactly. Either way: the exact top 10 among the filtered
    rows, with their columns."""
    from swarm import Router

    set_percent(migrated.db(), migrated.migration(), 100)
    langs = _add_lang(migrated.dsn)
    m = migrated.migration()
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        dbname = c.execute("SELECT current_database()").fetchone()[0]
        # On 60 rows the planner would rather sort them all: make the searches use the index, as on a big table.
        c.execute(sql.SQL("ALTER DATABASE {} SET enable_seqscan = off").format(sql.Identifier(dbname)))
    cfg = migrated.config(swarm={"ef_search": 10}, serving={"pool_size": 1, "pool_min": 1})
    router = Router.from_config(cfg)
    try:
        text = migrated.queries()[6]
        r = router.search(text, k=10, caller="filtered", where={"lang": "py"}, columns=["name", "lang"])
        vec, _ = router.arms["new"].embed(text)
        types = {"lang": "text", "name": "text"}
        q = build_search(m.target, "nomic_embedding", "vector", 384, where={"lang": "py"}, columns=(), types=types)
        with router.pool.connection() as c, c.transaction():
            c.execute("SET LOCAL hnsw.ef_search = 10")
            assert m.index_name in str(c.execute(sql.SQL("EXPLAIN ") + q.sql, q.params(vec, 10)).fetchall())
            index_only = c.execute(q.sql, q.params(vec, 10)).fetchall()
        with psycopg.connect(migrated.dsn, autocommit=True) as c:
            from pgvector.psycopg import register_vector

            register_vector(c)
            c.execute("SET enable_seqscan = on")
            c.execute("SET enable_indexscan = off")  # the ground truth: exact distances, no index
            exact = [
                str(row[0])
                for row in c.execute(
                    "SELECT id FROM documents WHERE lang = 'py' ORDER BY nomic_embedding <=> %s LIMIT 10", [vec]
                ).fetchall()
            ]
        listed = router.search(text, k=5, caller="filtered", where={"id": ["3", "6", "9"], "lang": ["py"]})
        none = router.search(text, k=5, caller="filtered", where={"name": None})
        with pytest.raises(UsageError, match=r"no column 'langue' in documents; columns: content, .*lang"):
            router.search(text, where={"langue": "py"})
        with pytest.raises(UsageError, match="no column 'title'"):
            router.search(text, columns=["title"])
    finally:
        router.close()

    assert len(index_only) < 10  # what the index scan alone returns under this filter
    assert r.arm == "new" and len(r.rows) == 10
    assert [row.id for row in r.rows] == exact
    assert all(row.columns["lang"] == "py" and langs[row.id] == "py" for row in r.rows)
    assert all(isinstance(row.columns["name"], str) for row in r.rows)
    assert r.distances == sorted(r.distances)
    assert r.as_dict()["results"][0]["columns"] == r.rows[0].columns
    if _server(migrated.dsn).pgvector_tuple >= ITERATIVE_SCAN:
        assert not r.exact  # the iterative index scan found them
    else:
        assert r.exact  # repeated exactly: pgvector < 0.8 has no iterative scans
    assert sorted(listed.ids, key=int) == ["3", "6", "9"]
    assert none.rows == []  # every row has a name


def test_the_async_router_answers_as_the_sync_one(migrated: Migrated) -> None:  # noqa: F811
    from swarm import AsyncRouter, Router

    set_percent(migrated.db(), migrated.migration(), 50)
    _add_lang(migrated.dsn)
    texts = migrated.queries()[:6]
    with Router.from_config(migrated.cfg) as sync_router:
        want = [sync_router.search(t, k=5, caller=f"twin-{i}", where={"lang": "txt"}) for i, t in enumerate(texts)]
        arm = sync_router.arm("twin-0")

    async def go() -> tuple[list, object, dict]:
        async with AsyncRouter.from_config(migrated.cfg) as router:
            got = await asyncio.gather(
                *(router.search(t, k=5, caller=f"twin-{i}", where={"lang": "txt"}) for i, t in enumerate(texts))
            )
            return list(got), await router.arm("twin-0"), router.pool.stats()

    got, async_arm, stats = asyncio.run(go())
    assert [(r.arm, r.ids) for r in got] == [(r.arm, r.ids) for r in want]
    assert async_arm == arm
    assert stats["pool_max"] == migrated.cfg.serving.pool_size
    # Both recorded their searches (12 in all), through their own pools.
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        assert c.execute("SELECT sum(queries) FROM swarm.query_rollup").fetchone()[0] == 12
