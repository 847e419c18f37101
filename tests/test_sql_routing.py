"""Routing from SQL: ``swarm.bucket`` is Python's bucket on every key, ``swarm.arm`` sends each caller where the
router does at every share, honours the kill switch in ``swarm.settings``, and the README's three lines work."""

from __future__ import annotations

import psycopg
from psycopg import sql

from swarm import commands
from swarm import migration as mig
from swarm.serving.rollout import set_percent
from swarm.serving.router import Router, bucket, choose_arm
from tests.test_router import Migrated, migrated, quality_root  # noqa: F401  (fixtures)

KEYS = (
    [f"user-{i}" for i in range(9_000)]
    + [f"tenant/{i}:session-{i * 7919}" for i in range(900)]
    + ["", " ", "Ünïcödé-ключ-鍵", "emoji-🙂", "a" * 1000, "'; DROP TABLE documents; --"]
    + [str(i) for i in range(94)]
)


def _sql_arms(dsn: str, keys: list[str], table: str = "documents") -> dict[str, tuple]:
    with psycopg.connect(dsn, autocommit=True) as c:
        rows = c.execute(
            "SELECT k, a.arm, a.column_name, a.dimension, a.migration_id, a.percent "
            "FROM unnest(%s::text[]) k, swarm.arm(%s, k) a",
            [keys, table],
        ).fetchall()
    return {r[0]: r[1:] for r in rows}


def test_the_sql_bucket_is_pythons_on_10000_keys(migrated: Migrated) -> None:  # noqa: F811
    assert len(KEYS) == 10_000 and len(set(KEYS)) == 10_000
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        got = dict(c.execute("SELECT k, swarm.bucket(k) FROM unnest(%s::text[]) k", [KEYS]).fetchall())
    want = {k: bucket(k) for k in KEYS}
    assert got == want
    assert min(want.values()) >= 0 and max(want.values()) < 10_000
    # Spread evenly: each tenth of the range holds about a tenth of the keys.
    deciles = [sum(1 for b in want.values() if d * 1000 <= b < (d + 1) * 1000) for d in range(10)]
    assert all(850 <= n <= 1150 for n in deciles), deciles


def test_swarm_arm_sends_each_caller_where_the_router_does_at_every_share(migrated: Migrated) -> None:  # noqa: F811
    db = migrated.db()
    keys = KEYS[:2_000]
    router = Router(migrated.cfg, migrated.dsn, record=False)
    try:
        for percent in (0, 10, 25, 33.3, 50, 99.99, 100):
            set_percent(db, migrated.migration(), percent)
            router.share(refresh=True)
            python = {k: router.arm(k) for k in keys}
            in_sql = _sql_arms(migrated.dsn, keys)
            assert {k: v[0] for k, v in in_sql.items()} == {k: a.arm for k, a in python.items()}, percent
            assert {k: v[0] for k, v in in_sql.items()} == {k: choose_arm(k, percent) for k in keys}
            for k, (_arm, column, dim, mid, pct) in in_sql.items():
                assert (column, dim, mid) == (python[k].column, python[k].dimension, migrated.mid)
                assert pct == python[k].percent
            n_new = sum(1 for v in in_sql.values() if v[0] == "new")
            assert abs(n_new - percent / 100 * len(keys)) < 0.05 * len(keys), (percent, n_new)
        assert {v[1] for v in in_sql.values()} == {"nomic_embedding"}
    finally:
        router.close()


def test_the_kill_switch_and_a_rollback_send_every_caller_to_legacy_in_sql_too(migrated: Migrated) -> None:  # noqa: F811
    keys = KEYS[:500]
    set_percent(migrated.db(), migrated.migration(), 100)
    assert {v[0] for v in _sql_arms(migrated.dsn, keys).values()} == {"new"}

    code, r = commands.rollout(migrated.cfg, use_new=False)
    assert code == 0 and r["use_new"] is False
    assert {v[0] for v in _sql_arms(migrated.dsn, keys).values()} == {"legacy"}
    with Router(migrated.cfg, migrated.dsn, record=False) as router:  # a router started now follows it too
        assert {router.arm(k).arm for k in keys} == {"legacy"}
    commands.rollout(migrated.cfg, use_new=True)
    assert {v[0] for v in _sql_arms(migrated.dsn, keys).values()} == {"new"}

    # A migration rolled back (or failed) serves nothing, whatever its recorded share.
    migrated.db().run(lambda c: mig.set_state(c, migrated.mid, "rolled_back", reason="test"))
    assert {v[:2] for v in _sql_arms(migrated.dsn, keys).values()} == {("legacy", "embedding")}

    # A table with no migration: legacy, and the application's own column (swarm does not know it).
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        c.execute("CREATE TABLE other (id int PRIMARY KEY, v vector(3))")
    assert set(_sql_arms(migrated.dsn, ["x"], "other").values()) == {("legacy", None, None, None, 0.0)}


def test_the_readme_three_lines(migrated: Migrated) -> None:  # noqa: F811
    """The README's "embed yourself" example, as an application would run it: ask swarm.arm, embed with that
    arm's model, search that column."""
    set_percent(migrated.db(), migrated.migration(), 50)
    text = migrated.queries()[7]
    with Router(migrated.cfg, migrated.dsn, record=False) as router:
        models = {"legacy": router.arms["legacy"].embedder, "new": router.arms["new"].embedder}
        seen = {}
        with psycopg.connect(migrated.dsn, autocommit=True) as conn:
            from pgvector.psycopg import register_vector

            register_vector(conn)
            for user in ("user-1", "user-2", "user-3", "user-4", "user-5", "user-6"):
                # -- the three lines --
                arm, column = conn.execute("SELECT arm, column_name FROM swarm.arm('documents', %s)", [user]).fetchone()
                vec = models[arm].embed([text], query=True)[0]
                rows = conn.execute(
                    sql.SQL("SELECT id FROM documents ORDER BY {} <=> %s LIMIT 10").format(sql.Identifier(column)),
                    [vec],
                ).fetchall()
                # --
                seen[user] = (arm, [str(r[0]) for r in rows])
                assert router.search(text, k=10, caller=user).ids == seen[user][1]
    assert {a for a, _ in seen.values()} == {"legacy", "new"}
