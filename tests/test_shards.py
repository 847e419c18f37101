"""Shard planning: equal shards, then a last round of smaller ones, so the migrators finish together."""

from __future__ import annotations

import psycopg
import pytest

from swarm import migration as mig
from swarm.commands import preflight
from swarm.migration.shards import shard_sizes
from swarm.store.db import Database
from tests.test_migration import create_table


def test_shard_sizes_shrink_in_the_last_round_and_cover_every_row() -> None:
    # The bench's pipeline table: 7 full shards, then each a quarter of the rest, down to 4 batches.
    assert shard_sizes(5000, 500, 2, 32) == [500] * 7 + [375, 282, 211, 158, 128, 128, 128, 90]
    # A table whose shards are at the floor or below keeps equal shards (the floor is 4 batches).
    assert shard_sizes(120, 50, 2, 32) == [50, 50, 20]
    assert shard_sizes(60, 30, 1, 32) == [30, 30]
    # One migrator never waits for another: equal shards, a table of one shard stays one.
    assert shard_sizes(5000, 500, 1, 32) == [500] * 10 and shard_sizes(48, 48, 1, 8) == [48]
    assert shard_sizes(48, 48, 2, 8) == [32, 16]
    assert shard_sizes(0, 10, 2, 8) == []
    for total, rows, migrators, batch in [(10_000_000, 2000, 8, 32), (999, 100, 3, 8), (7, 1, 4, 1), (1, 5, 2, 1)]:
        sizes = shard_sizes(total, rows, migrators, batch)
        assert sum(sizes) == total and all(0 < n <= rows for n in sizes)
        assert sizes == sorted(sizes, reverse=True), "shards only get smaller"
    tail = shard_sizes(10_000_000, 2000, 8, 32)
    assert len(tail) < 10_000_000 // 2000 + 40 and tail[-2] == 250, "a few extra shards, none below shard_rows // 8"


@pytest.mark.parametrize("key", ["bigint", "text"])
def test_planned_shards_are_the_rows_they_say(make_config, dsn: str, conn: psycopg.Connection, key: str) -> None:  # type: ignore[no-untyped-def]
    create_table(conn, "docs", key, 1000, seed=3)
    cfg = make_config(
        database={"table": "docs"},
        swarm={"shard_rows": 100, "migrators": 2, "validators": 0},
        embedding={"batch_size": 4},
    )
    db = Database(dsn)
    try:
        info, table, server = preflight(cfg, db)
        m = mig.plan(
            db, cfg, name="t", model_id="m", model_sha256=info.sha256, dimension=384, server=server, table=table
        )
    finally:
        db.close()
    shards = conn.execute(
        "SELECT lo, hi, rows_planned FROM swarm.shards WHERE migration_id = %s ORDER BY shard_id", [m.id]
    ).fetchall()
    assert [s[2] for s in shards] == shard_sizes(1000, 100, 2, 4)
    target = mig.target_for(cfg, key)
    for lo, hi, planned in shards:
        q, params = target.rows_in_range(lo, hi)
        assert conn.execute(q, params).fetchone()[0] == planned, (lo, hi)
    assert shards[0][0] is None and all(a[1] == b[0] for a, b in zip(shards, shards[1:], strict=False))
    assert shards[-1][1] == conn.execute("SELECT max(id)::text FROM docs").fetchone()[0]
