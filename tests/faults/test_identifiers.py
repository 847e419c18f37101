"""Safe default: every identifier is quoted with ``psycopg.sql``; no SQL is built from strings with user values.

The config refuses names with quotes, ``;`` or whitespace (``test_bad_config``). Below that line the SQL layer
must hold on its own: with the config's check switched off, a whole migration (plan, sync trigger, shards,
backfill, staging, drain, index, counts) runs on a table and columns whose names are SQL, and the table those
names try to drop is still there. And a name the config does accept must not escape its quoting either.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql

from swarm import migration as mig
from swarm.core import config as swarm_config
from tests.faults.harness import install_audit, tally
from tests.support.runner import run_in_process

HOSTILE = {
    "table": 'Docs"; DROP TABLE victim; --',
    "id_column": "key); DROP TABLE victim; --",
    "content_column": "body' OR '1'='1",
    "legacy_column": "Legacy Vec",
    "new_column": 'new"vec; DROP TABLE victim',
}


def _make_table(conn: psycopg.Connection, names: dict[str, str], rows: int) -> None:
    from pgvector.psycopg import register_vector

    register_vector(conn)
    t, k, c, lg = (sql.Identifier(names[x]) for x in ("table", "id_column", "content_column", "legacy_column"))
    conn.execute(
        sql.SQL("CREATE TABLE {t} ({k} int PRIMARY KEY, {c} text, {lg} vector(384))").format(t=t, k=k, c=c, lg=lg)
    )
    legacy = np.ones(384, dtype=np.float32) / np.sqrt(384)
    with conn.cursor() as cur:
        cur.executemany(
            sql.SQL("INSERT INTO {t} ({k}, {c}, {lg}) VALUES (%s, %s, %s)").format(t=t, k=k, c=c, lg=lg),
            [(i, f"def f{i}(x): return x * {i}", legacy) for i in range(1, rows + 1)],
        )
    install_audit(
        conn,
        names["table"],
        new_column=names["new_column"],
        id_column=names["id_column"],
        content_column=names["content_column"],
    )


@pytest.mark.chaos
def test_sql_in_identifiers_stays_a_name(
    make_config: Any,
    dsn: str,
    conn: psycopg.Connection,
    fresh_embedder: Any,
    monkeypatch: pytest.MonkeyPatch,
    safeguard: Any,
) -> None:
    conn.execute("CREATE TABLE victim (id int)")
    _make_table(conn, HOSTILE, 24)
    monkeypatch.setattr(swarm_config, "_IDENT", re.compile(r"^.{1,63}$", re.S))  # the config's check, off
    cfg = make_config(database=dict(HOSTILE), swarm={"shard_rows": 10, "validators": 0}, embedding={"batch_size": 8})
    run = run_in_process(cfg, dsn)
    m, result = run.migration, run.result
    from tests.faults.table import Outcome

    out = Outcome("identifiers", "")
    ids = tally(out, conn, mig.load(conn, m.id), fresh_embedder)
    victim = conn.execute("SELECT to_regclass('victim')").fetchone()[0] is not None
    g = safeguard(
        "identifiers quoted (psycopg.sql)",
        f"table and columns named with SQL ({HOSTILE['table']!r}, ...), config check off: "
        f"migration {result['state']}, {out.rows_embedded}/{out.rows_total} embedded, "
        f"table victim {'intact' if victim else 'DROPPED'}",
    )
    g.passed = result["state"] == "completed" and victim and out.rows_embedded == 24 and not ids["stale"]
    assert g.passed, (result, ids)


@pytest.mark.chaos
def test_a_name_the_config_accepts_cannot_break_out_of_the_trigger_body(
    make_config: Any, dsn: str, conn: psycopg.Connection, safeguard: Any, minilm_q8: Any
) -> None:
    """``Target.create_sync_function`` puts quoted identifiers inside the function body, a ``$swarm$``-quoted
    string: a column whose name contains ``$swarm$`` (the config accepts it: only quotes, ``;``, backslash and
    whitespace are refused) ends that string early, and the rest of the name becomes SQL text."""
    names = {
        "table": "dollar_docs",
        "id_column": "id",
        "content_column": "body$swarm$",
        "legacy_column": "embedding",
        "new_column": "nomic_embedding",
    }
    _make_table(conn, names, 12)
    cfg = make_config(database=dict(names), swarm={"shard_rows": 12, "validators": 0})
    assert cfg.database.content_column == "body$swarm$", "the config accepts this name"
    try:
        result = run_in_process(cfg, dsn).result
        state, detail = result["state"], ""
    except Exception as e:  # noqa: BLE001 (what escapes is the finding)
        state, detail = "raised", f"{type(e).__module__}.{type(e).__name__}: {str(e).splitlines()[0][:90]}"
    g = safeguard(
        "identifiers inside the sync trigger's body",
        f"content column 'body$swarm$' (accepted by the config): migration {state} {detail}".strip(),
    )
    g.passed = state == "completed"
    assert state == "completed", detail
