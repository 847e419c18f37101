"""Scenario 7: bad config and input. An unknown key, a negative batch size, a table without a primary key, a
column that does not exist, a legacy column whose dimension differs from its legacy model, and a table name that
carries SQL: ``orchestrate`` answers each with one clear line (exit 2) and changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.faults.harness import cli, create_docs, snapshot, toml_for
from tests.fix_db import REPO

Q8 = REPO / "model/all-MiniLM-L6-v2.Q8_0.gguf"
F16 = REPO / "model/all-MiniLM-L6-v2.f16.gguf"

CASES: dict[str, tuple[dict[str, dict[str, Any]], str]] = {
    # case: (config sections over a good config, what the one line must say)
    "unknown key": ({"embedding": {"batchsize": 3}}, "embedding.batchsize = 3: unknown key"),
    "negative batch size": ({"embedding": {"batch_size": -4}}, "embedding.batch_size = -4: must be > 0"),
    "table without primary key": ({"database": {"table": "nopk"}}, "database.table = 'nopk': has no primary key"),
    "column does not exist": (
        {"database": {"content_column": "body"}},
        "database.content_column = 'body': no such column in docs",
    ),
    "legacy dim != legacy model": (
        {"database": {"table": "docs3"}},
        "database.legacy_column = 'embedding': holds vector(3) but the legacy model "
        "all-MiniLM-L6-v2.f16.gguf gives 384 dims",
    ),
    "table name carrying SQL": (
        {"database": {"table": "docs; DROP TABLE x"}},
        "database.table = 'docs; DROP TABLE x': not a valid [schema.]table name",
    ),
}


@pytest.mark.chaos
def test_bad_config_and_input_change_nothing(
    dsn: str, conn: psycopg.Connection, tmp_path: Path, minilm_q8: Path, record: Any
) -> None:
    create_docs(conn, "docs", 20, seed=7)
    conn.execute("CREATE TABLE nopk (id int, content text, embedding vector(384))")
    conn.execute("CREATE TABLE docs3 (id int PRIMARY KEY, content text, embedding vector(3))")
    conn.execute("INSERT INTO docs3 VALUES (1, 'def f(): pass', '[1,2,3]')")
    conn.execute("CREATE TABLE x (id int PRIMARY KEY)")
    before = snapshot(conn, "docs")
    (tmp_path / "configs").mkdir()
    results = {}
    for name, (sections, _) in CASES.items():
        base: dict[str, dict[str, Any]] = {
            "database": {"dsn": dsn, "table": "docs"},
            "embedding": {"model_path": str(Q8)},
            "legacy": {"model_path": str(F16)},
            "swarm": {"ray_address": "127.0.0.1:9", "validators": 0},
        }
        for k, v in sections.items():
            base[k].update(v)
        toml = tmp_path / "configs" / f"{name.replace(' ', '_').replace('!=', 'ne')}.toml"
        toml.write_text(toml_for(base))
        results[name] = cli(["-c", str(toml), "orchestrate", "--no-progress"], cwd=tmp_path)
    after = snapshot(conn, "docs")
    failures = []
    for name, (_, expect) in CASES.items():
        code, stdout, stderr = results[name]
        lines = stderr.strip().splitlines()
        out = record(f"7 bad input: {name}", _faults(name))
        out.rows_total = before["rows"][0]
        out.rows_lost = 0 if after["rows"] == before["rows"] else out.rows_total
        shown = lines[-1].replace(str(tmp_path / "configs") + "/", "") if lines else "(no message)"
        out.outcome = f"exit {code}: {shown}"
        out.passed = (
            code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0] and after == before
        )
        if not out.passed:
            failures.append(f"{name}: exit {code}, stderr {stderr!r}")
    assert not failures, failures
    assert after == before, "a refused migration changed the database"
    assert conn.execute("SELECT to_regclass('x')").fetchone()[0] is not None


def _faults(name: str) -> str:
    sections, _ = CASES[name]
    return "; ".join(f"{s}.{k} = {v!r}" for s, kv in sections.items() for k, v in kv.items())
