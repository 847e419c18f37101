"""Scenario 6: bad models. A missing file, a truncated file, a file that is not GGUF, and a GGUF whose n_embd
differs from ``[embedding].dimension``: ``orchestrate`` refuses each with its own one-line message (exit 2)
before it changes anything in the database.
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


@pytest.mark.chaos
def test_bad_models_are_refused_before_any_change(
    dsn: str, conn: psycopg.Connection, tmp_path: Path, minilm_q8: Path, record: Any
) -> None:
    create_docs(conn, "docs", 20, seed=6)
    before = snapshot(conn, "docs")
    models = tmp_path / "models"
    models.mkdir()
    data = Q8.read_bytes()
    (models / "truncated.gguf").write_bytes(data[: len(data) // 2])
    (models / "notes.gguf").write_text("# this is a README, not a model\n" * 40)
    cases: dict[str, tuple[str, Path, int, str]] = {
        # case: (faults column, model path, dimension, what the message must say)
        "missing file": ("model_path names no file", models / "absent.gguf", 384, "no such file"),
        "truncated file": ("the Q8_0 GGUF cut at half its size", models / "truncated.gguf", 384, "truncated GGUF"),
        "not GGUF": ("a text file named .gguf", models / "notes.gguf", 384, "not a GGUF file"),
        "n_embd != dimension": (
            "384-dim GGUF, dimension = 768",
            Q8,
            768,
            "embedding length is 384 but [embedding].dimension is 768",
        ),
    }
    (tmp_path / "configs").mkdir()
    argv: dict[str, list[str]] = {}
    for name, (_, path, dim, _) in cases.items():
        toml = tmp_path / "configs" / f"{name.replace(' ', '_').replace('!=', 'ne')}.toml"
        toml.write_text(
            toml_for(
                {
                    "database": {"dsn": dsn, "table": "docs"},
                    "embedding": {"model_path": str(path), "dimension": dim},
                    "legacy": {"model_path": str(F16)},
                    # A refusal that came too late would try to reach Ray here and fail differently.
                    "swarm": {"ray_address": "127.0.0.1:9", "validators": 0},
                }
            )
        )
        argv[name] = ["-c", str(toml), "orchestrate", "--no-progress"]
    results = {name: cli(args, cwd=tmp_path) for name, args in argv.items()}
    after = snapshot(conn, "docs")
    messages = []
    for name, (faults, path, _, expect) in cases.items():
        code, stdout, stderr = results[name]
        lines = stderr.strip().splitlines()
        out = record(f"6 bad model: {name}", faults)
        out.rows_total = before["rows"][0]
        out.outcome = f"exit {code}: " + (lines[-1].replace(str(path.parent) + "/", "") if lines else "(no message)")
        out.rows_lost = 0 if after["rows"] == before["rows"] else out.rows_total
        ok = code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and expect in lines[0]
        out.passed = ok and after == before
        messages.append(lines[0] if lines else "")
        assert ok, f"{name}: exit {code}, stderr {stderr!r}, stdout {stdout!r}"
    assert after == before, "a refused migration changed the database"
    assert len({m.split(": ", 2)[-1] for m in messages}) == len(cases), "each fault needs its own message"
