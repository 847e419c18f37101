"""The cutover (``decommission --rename``): after a real decommission the new column takes the legacy column's
name and its index is renamed, so the application's own ``ORDER BY embedding <=> $1`` searches the new vectors;
refused, with one line, while the legacy column exists; and, put in the decommission's own transaction after the
DROP COLUMN, the application's query never fails across it."""

from __future__ import annotations

import threading

import psycopg
import pytest
from pgvector.psycopg import register_vector
from psycopg import sql

from swarm import migration as mig
from swarm.core.errors import MigrationError
from swarm.ops import cutover
from swarm.ops.decommission import decommission, legacy_indexes
from swarm.serving.rollout import set_percent
from swarm.serving.router import Router
from tests.test_router import Migrated, migrated, quality_root  # noqa: F401  (fixtures)

#: What the application runs, unchanged from before the migration.
APP_SQL = "SELECT id::text FROM documents ORDER BY embedding <=> %s::vector(384) LIMIT 5"


def _columns(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn, autocommit=True) as c:
        return dict(
            c.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = 'documents'::regclass AND attnum > 0 AND NOT attisdropped"
            ).fetchall()
        )


def test_the_cutover_is_refused_while_the_legacy_column_exists(migrated: Migrated) -> None:  # noqa: F811
    set_percent(migrated.db(), migrated.migration(), 100)
    before = _columns(migrated.dsn)
    with pytest.raises(MigrationError) as e:
        cutover.cutover(migrated.cfg, migrated.dsn)
    assert str(e.value) == (
        "cutover refused: the legacy column documents.embedding still exists; the cutover runs after "
        "`decommission` drops it (`decommission --rename` does both)"
    )
    assert _columns(migrated.dsn) == before


def test_after_decommission_the_applications_own_query_searches_the_new_vectors(migrated: Migrated) -> None:  # noqa: F811
    set_percent(migrated.db(), migrated.migration(), 100)
    m = migrated.migration()
    text = migrated.queries()[8]
    with Router(migrated.cfg, migrated.dsn, record=False) as router:
        before = router.search(text, k=5, caller="app")  # the new column, through the router
        vec, _ = router.arms["new"].embed(text)  # what the application embeds once it uses the new model
    decommission(migrated.cfg, migrated.dsn, report=False)
    assert "embedding" not in _columns(migrated.dsn)

    r = cutover.cutover(migrated.cfg, migrated.dsn)

    assert r["from_column"] == "nomic_embedding" and r["column"] == "embedding"
    assert r["from_index"] == m.index_name and r["index"] == "documents_embedding_idx"
    cols = _columns(migrated.dsn)
    assert cols["embedding"] == "vector(384)" and "nomic_embedding" not in cols
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        register_vector(c)
        app = [row[0] for row in c.execute(APP_SQL, [vec]).fetchall()]
        dbname = c.execute("SELECT current_database()").fetchone()[0]
        c.execute(sql.SQL("ALTER DATABASE {} SET enable_seqscan = off").format(sql.Identifier(dbname)))
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        register_vector(c)
        plan = str(c.execute("EXPLAIN " + APP_SQL, [vec]).fetchall())
        indexes = [r[0] for r in c.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'documents'")]
        recorded = mig.load(c, m.id)
        events = [e[0] for e in c.execute("SELECT detail FROM swarm.events WHERE kind = 'cutover'").fetchall()]
        sql_arm = c.execute("SELECT arm, column_name, dimension FROM swarm.arm('documents', 'app')").fetchone()
    assert app == before.ids  # the application's unchanged SQL finds what the router found on the new column
    assert "documents_embedding_idx" in plan  # ... through the index swarm built, under its new name
    assert m.index_name not in indexes and "documents_embedding_idx" in indexes
    assert (recorded.target.new_column, recorded.index_name, recorded.phase) == (
        "embedding",
        "documents_embedding_idx",
        "decommissioned",
    )
    assert events == [
        {
            "from_column": "nomic_embedding",
            "column": "embedding",
            "from_index": m.index_name,
            "index": "documents_embedding_idx",
            "column_type": "vector(384)",
        }
    ]
    assert sql_arm == ("new", "embedding", 384)
    with Router(migrated.cfg, migrated.dsn, record=False) as router:  # routers follow the new name
        after = router.search(text, k=5, caller="app")
    assert after.arm == "new" and after.ids == before.ids and not after.errors

    with pytest.raises(MigrationError, match="already cut over: documents.embedding holds the new vectors"):
        cutover.cutover(migrated.cfg, migrated.dsn)


def test_dropped_and_renamed_in_one_transaction_the_applications_query_never_fails(migrated: Migrated) -> None:  # noqa: F811
    """The order ``decommission --rename`` should use: the legacy column's DROP and the cutover's RENAME in one
    DDL transaction. An application querying ``embedding`` all along sees the legacy vectors, then the new ones,
    and never an error (a prepared statement included: psycopg prepares it after 5 runs)."""
    set_percent(migrated.db(), migrated.migration(), 100)
    m = migrated.migration()
    with Router(migrated.cfg, migrated.dsn, record=False) as router:
        vec, _ = router.arms["legacy"].embed(migrated.queries()[9])  # same dimension: the old query works on both
    seen: list[int] = []
    errors: list[str] = []
    stop = threading.Event()
    renamed = threading.Event()
    after = [0]

    def app() -> None:
        with psycopg.connect(migrated.dsn, autocommit=True) as c:
            register_vector(c)
            while not stop.is_set():
                try:
                    seen.append(len(c.execute(APP_SQL, [vec]).fetchall()))
                    if renamed.is_set():
                        after[0] += 1
                        if after[0] >= 20:
                            return
                except psycopg.Error as e:
                    errors.append(f"{type(e).__name__}: {e}")

    t = threading.Thread(target=app)
    t.start()
    db = migrated.db()
    try:
        while len(seen) < 20 and t.is_alive():
            t.join(0.05)
        indexes = db.run(lambda c: legacy_indexes(c, m))
        assert indexes == ["documents_embedding_idx"]  # the name the new index takes: free in that transaction
        ddl = [
            *m.target.drop_sync(m.id),
            *[sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(ix)) for ix in indexes],
            m.target.drop_column(m.target.legacy_column),
            *db.run(lambda c: cutover.statements_in(c, m, dropping=indexes)),
        ]
        attempts = mig.run_ddl(db, ddl, lock_timeout_ms=2000, retries=30)
        renamed.set()
        t.join(120)
    finally:
        stop.set()
        t.join(10)
    with pytest.raises(MigrationError, match="decommission --rename refused: already cut over"):
        db.run(lambda c: cutover.statements_in(c, migrated.migration()))
    assert attempts >= 1 and not errors, errors[:3]
    assert after[0] >= 20 and len(seen) >= 40 and set(seen) == {5}
    assert _columns(migrated.dsn)["embedding"] == "vector(384)" and "nomic_embedding" not in _columns(migrated.dsn)
