"""Shards: primary-key ranges of ~``shard_rows`` rows (smaller in the last round), handed to migrators and fenced
by their attempt number.

Claims use ``FOR UPDATE SKIP LOCKED`` so two coordinators (a restarted one and its ghost) never hand out the same
shard twice in one attempt; a migrator's checkpoint UPDATE names the attempt it was given, so an owner presumed
dead cannot commit after its shard was handed to another.
"""

from __future__ import annotations

import itertools

import psycopg

from swarm.store.db import Database, one
from swarm.store.sql import Target


def shard_sizes(total: int, shard_rows: int, migrators: int, batch_size: int) -> list[int]:
    """The row counts of the shards, in key order: ``shard_rows`` each, and in the last round smaller ones.

    Shards are handed out in order and a migrator takes the next when it is done, so with equal shards the
    migration ends with one migrator finishing its last shard while the others wait (on a 7B model a 2,000-row
    shard is an hour of one machine). Once what is left would be less than two rounds of full shards, each shard
    is a ``2 * migrators``-th of the rest (guided self-scheduling, as OpenMP's ``schedule(guided)``), never below
    ``max(shard_rows // 8, 4 * batch_size)`` rows: a smaller shard costs its claim and checkpoints without
    balancing anything. Tables of shards at that floor or below, and a swarm of one migrator (it never waits for
    another), keep equal shards."""
    floor = max(shard_rows // 8, 4 * batch_size, 1) if migrators > 1 else shard_rows
    sizes: list[int] = []
    left = total
    while left > 0:
        n = min(shard_rows, max(floor, -(-left // (2 * max(1, migrators)))), left)
        sizes.append(n)
        left -= n
    return sizes


def make_shards(
    db: Database, mid: int, target: Target, shard_rows: int, migrators: int = 1, batch_size: int = 1
) -> int:
    """Split by primary-key ranges of the rows ``shard_sizes`` gives. Returns the row count."""
    conn = db.conn
    total = int(one(conn.execute(target.count_rows()).fetchone(), "the count of the table's rows")[0])
    sizes = shard_sizes(total, shard_rows, migrators, batch_size)
    ends = list(itertools.accumulate(sizes[:-1]))  # the last shard ends at the greatest key, below
    body = sizes[:-1].count(shard_rows)  # the full shards come first: sizes never grow
    params = {"step": int(shard_rows), "body": body * shard_rows, "tail": ends[body:]}
    bounds = [(r[0], int(r[1])) for r in conn.execute(target.shard_bounds(), params).fetchall()]
    ranges: list[tuple[str | None, str | None, int]] = []
    lo: str | None = None
    done = 0
    for b, rn in bounds:
        ranges.append((lo, b, rn - done))
        lo, done = b, rn
    # The last shard ends at the greatest key there is now, not at infinity: rows the application inserts after
    # the plan are queued by the sync trigger (installed before this) and embedded by the drain, so a steady
    # stream of inserts cannot keep the backfill chasing the end of the table.
    top = one(conn.execute(target.max_key()).fetchone(), "the table's greatest key")[0]
    ranges.append((lo, top, max(0, total - done)))
    with conn.transaction():
        conn.execute("DELETE FROM swarm.shards WHERE migration_id = %s", [mid])
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO swarm.shards (migration_id, shard_id, lo, hi, rows_planned) VALUES (%s, %s, %s, %s, %s)",
                [(mid, i, lo_, hi_, n) for i, (lo_, hi_, n) in enumerate(ranges)],
            )
    return total


# --------------------------------------------------------------------------------------------------------------
# Shards: claim, release (the coordinator's side)
# --------------------------------------------------------------------------------------------------------------
def claim_shard(conn: psycopg.Connection, mid: int, worker: str) -> tuple[int, int] | None:
    """Hand the next pending shard to ``worker``: (shard_id, attempt). The attempt number fences old owners."""
    r = conn.execute(
        "UPDATE swarm.shards SET state = 'running', worker = %s, attempt = attempt + 1, error = NULL, "
        "started_at = coalesce(started_at, now()), updated_at = now() "
        "WHERE migration_id = %s AND shard_id = ("
        "  SELECT shard_id FROM swarm.shards WHERE migration_id = %s AND state = 'pending' "
        "  ORDER BY shard_id LIMIT 1 FOR UPDATE SKIP LOCKED) "
        "RETURNING shard_id, attempt",
        [worker, mid, mid],
    ).fetchone()
    return (r[0], r[1]) if r else None


def release_shard(
    conn: psycopg.Connection, mid: int, shard_id: int, attempt: int, *, error: str, max_attempts: int
) -> str:
    """A shard's run failed: back to pending (it resumes from its checkpoint), or ``failed`` once it has failed
    ``max_attempts`` times. Returns the new state."""
    r = conn.execute(
        "UPDATE swarm.shards SET failures = failures + 1, "
        "state = CASE WHEN failures + 1 >= %s THEN 'failed' ELSE 'pending' END, error = %s, "
        "updated_at = now() WHERE migration_id = %s AND shard_id = %s AND attempt = %s AND state = 'running' "
        "RETURNING state",
        [max_attempts, error[:2000], mid, shard_id, attempt],
    ).fetchone()
    return r[0] if r else "unchanged"


def requeue_running(conn: psycopg.Connection, mid: int) -> int:
    """After a coordinator restart: shards left 'running' go back to pending (their owners are fenced)."""
    return conn.execute(
        "UPDATE swarm.shards SET state = 'pending', updated_at = now() WHERE migration_id = %s AND state = 'running'",
        [mid],
    ).rowcount


def stop_shards(conn: psycopg.Connection, mid: int) -> int:
    """Fence every running shard: its migrator's next checkpoint fails and it stops writing."""
    return conn.execute(
        "UPDATE swarm.shards SET state = 'cancelled', updated_at = now() "
        "WHERE migration_id = %s AND state IN ('running', 'pending')",
        [mid],
    ).rowcount


def reopen(conn: psycopg.Connection, mid: int) -> int:
    """A paused migration resumed by an operator: shards that failed ``max_attempts`` times get their attempts
    back (their checkpoints are kept). Returns how many."""
    return conn.execute(
        "UPDATE swarm.shards SET state = 'pending', failures = 0, updated_at = now() "
        "WHERE migration_id = %s AND state = 'failed'",
        [mid],
    ).rowcount
