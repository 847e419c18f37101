"""Scenario 3: PostgreSQL restarted mid-backfill; separately, ``pg_terminate_backend`` on every swarm connection
mid-batch. Every agent reconnects (``Database.run`` retries ``OperationalError``/``AdminShutdown`` with backoff),
the batch whose transaction died is written again, and the migration completes.

In both, a migrator is caught inside its write transaction: the test locks a row of its batch, so the migrator
has staged its vectors and waits in the ``UPDATE`` when the fault strikes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from swarm import commands
from swarm import migration as mig
from swarm.store.embedded import pg_ctl_embedded
from tests.faults.harness import blocked_writers, create_docs, status_when, tally, wait_for

ROWS = 400
SWARM_BACKENDS = (
    "SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database() "
    "AND application_name LIKE 'swarm%%' AND pid <> pg_backend_pid()"
)


def _catch_a_batch(env: Any, conn: psycopg.Connection, table: str, row: int) -> psycopg.Connection:
    """Lock ``row`` (ahead of the backfill) and wait until a migrator's write transaction blocks on it."""
    holder = psycopg.connect(env.plain_dsn, application_name="test-row-lock")
    assert holder.execute(f"SELECT nomic_embedding IS NULL FROM {table} WHERE id = %s FOR UPDATE", [row]).fetchone()[0]
    wait_for(lambda: blocked_writers(conn), 240, "a migrator to block on the locked row")
    return holder


@pytest.mark.chaos
@pytest.mark.slow
def test_postgres_restart_mid_backfill(
    fresh_swarm: Any, fresh_embedder: Any, record: Any, skip_if_external_server: None
) -> None:
    env = fresh_swarm
    out = record(
        "3a PostgreSQL restart",
        "pg_ctl restart -m fast while a migrator is inside its write transaction (backfill at ~20%)",
    )
    conn = psycopg.connect(env.plain_dsn, autocommit=True)
    create_docs(conn, "k_pgrestart", ROWS, seed=31)
    pgdata = Path(conn.execute("SHOW data_directory").fetchone()[0])
    cfg = env.make("k_pgrestart")
    assert commands.orchestrate(cfg, detach=True, progress=False) == 0
    holder = _catch_a_batch(env, conn, "k_pgrestart", 88)
    conn.close()
    t0 = time.monotonic()
    pg_ctl_embedded(pgdata, "restart")
    restart_s = time.monotonic() - t0
    holder.close()
    final = status_when(cfg, lambda s: s["state"] in mig.TERMINAL, 420, "the migration to end")
    conn = psycopg.connect(env.plain_dsn, autocommit=True)
    ids = tally(out, conn, mig.load(conn, final["id"]), fresh_embedder)
    leaks = env.check_leaks(conn)
    out.outcome = (
        f"{final['state']}; server down and up in {restart_s:.1f} s; status {final['rows_done']}/{final['rows_total']}"
    )
    conn.close()
    assert final["state"] == "completed", final["reason"]
    assert out.rows_lost == 0, ids["lost"]
    assert out.rows_stale == 0, ids["stale"]
    assert out.rows_twice == 0, ids["twice"]
    assert final["rows_done"] == final["rows_total"] == ROWS
    assert not leaks, leaks


@pytest.mark.chaos
@pytest.mark.slow
def test_terminate_every_swarm_connection_mid_batch(fresh_swarm: Any, fresh_embedder: Any, record: Any) -> None:
    env = fresh_swarm
    out = record(
        "3b pg_terminate_backend",
        "terminate every swarm connection twice: while a migrator waits in its batch's UPDATE, then 3 s later",
    )
    conn = psycopg.connect(env.plain_dsn, autocommit=True)
    create_docs(conn, "k_terminate", ROWS, seed=32)
    cfg = env.make("k_terminate")
    assert commands.orchestrate(cfg, detach=True, progress=False) == 0
    holder = _catch_a_batch(env, conn, "k_terminate", 88)
    killed: list[list[str]] = []
    for round_ in range(2):
        rows = conn.execute(SWARM_BACKENDS).fetchall()
        for pid, _ in rows:
            conn.execute("SELECT pg_terminate_backend(%s)", [pid])
        killed.append(sorted(name for _, name in rows))
        if round_ == 0:
            holder.rollback()
            holder.close()
            time.sleep(3)
    final = status_when(cfg, lambda s: s["state"] in mig.TERMINAL, 420, "the migration to end")
    ids = tally(out, conn, mig.load(conn, final["id"]), fresh_embedder)
    leaks = env.check_leaks(conn)
    out.outcome = (
        f"{final['state']}; terminated {len(killed[0])} then {len(killed[1])} backends "
        f"({', '.join(sorted(set(killed[0])))}); status {final['rows_done']}/{final['rows_total']}"
    )
    conn.close()
    assert len(killed[0]) >= 3, killed  # the coordinator and both migrators at least
    assert final["state"] == "completed", final["reason"]
    assert out.rows_lost == 0, ids["lost"]
    assert out.rows_stale == 0, ids["stale"]
    assert out.rows_twice == 0, ids["twice"]
    assert final["rows_done"] == final["rows_total"] == ROWS
    assert not leaks, leaks
