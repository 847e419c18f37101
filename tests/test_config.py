"""Bad configuration and input: one clear line naming the key, the value and the fix; exit 2; nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from swarm.core.config import load_config
from swarm.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "swarm", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_demo_and_target_configs_load() -> None:
    demo = load_config(REPO / "configs/demo.toml")
    assert demo.embedding.dimension == 384 and demo.database.embedded
    nomic = load_config(REPO / "configs/nomic-embed-code.toml")
    assert nomic.embedding.dimension == 3584
    assert nomic.embedding.query_prefix == "Represent this query for searching relevant code: "


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[embedding]\nbatchsize = 3\n", "embedding.batchsize = 3: unknown key"),
        ("[embedding]\nbatch_size = -4\n", "embedding.batch_size = -4: must be > 0"),
        (
            '[swarm]\ntopology = "mesh"\n',
            "swarm.topology = 'mesh': unknown topology; supported: hierarchical",
        ),
        (
            '[database]\ntable = "documents; DROP TABLE x"\n',
            "database.table = 'documents; DROP TABLE x': not a valid",
        ),
        ("[rollout]\nsteps = [50, 10]\n", "rollout.steps = [50, 10]: steps must be increasing"),
        ('[database]\nnew_column = "embedding"\n', "new_column must differ from legacy_column"),
        # pgvector would refuse this CREATE INDEX only after the whole backfill.
        (
            "[swarm]\nhnsw_m = 32\nhnsw_ef_construction = 40\n",
            "swarm.hnsw_ef_construction = 40: must be >= 2 * hnsw_m = 64",
        ),
        ("[swarm]\nef_search = 0\n", "swarm.ef_search = 0: must be >= 1"),
        ("[swarm]\nef_serach = 80\n", "swarm.ef_serach = 80: unknown key"),
    ],
)
def test_bad_values_are_one_line_errors(tmp_path: Path, toml: str, expected: str) -> None:
    cfg = tmp_path / "configs" / "bad.toml"
    cfg.parent.mkdir()
    cfg.write_text(toml)
    r = run_cli("-c", str(cfg), "status", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert expected in lines[0]
    assert not (tmp_path / ".swarm").exists(), "a config error must write nothing"


def test_environment_overrides_and_feature_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARM_EMBEDDING__BATCH_SIZE", "7")
    monkeypatch.setenv("USE_NOMIC_EMBEDDINGS", "false")
    cfg = load_config(REPO / "configs/demo.toml")
    assert cfg.embedding.batch_size == 7
    assert cfg.rollout.use_new is False
    monkeypatch.setenv("USE_NOMIC_EMBEDDINGS", "maybe")
    with pytest.raises(ConfigError, match="USE_NOMIC_EMBEDDINGS = 'maybe': must be true or false"):
        load_config(REPO / "configs/demo.toml")


def test_dsn_password_is_never_printed(tmp_path: Path) -> None:
    cfg = load_config(None, database={"dsn": "postgresql://app:hunter2@127.0.0.1:1/db"})
    assert "hunter2" not in repr(cfg) and "hunter2" not in str(cfg.public_dict())
    r = run_cli("db", "url", cwd=tmp_path, env={"SWARM_DATABASE__DSN": "postgresql://app:hunter2@127.0.0.1:1/db"})
    assert "hunter2" not in r.stdout + r.stderr
    assert "postgresql://app:****@127.0.0.1:1/db" in r.stdout


def test_missing_config_file(tmp_path: Path) -> None:
    r = run_cli("-c", "nope.toml", "status", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: --config = 'nope.toml': file not found; pass an existing TOML file"


def test_table_errors_change_nothing(make_config, conn: psycopg.Connection) -> None:  # type: ignore[no-untyped-def]
    from swarm import commands

    conn.execute("CREATE TABLE nopk (id int, content text, embedding vector(384))")
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, content text, embedding vector(3))")
    conn.execute("INSERT INTO docs VALUES (1, 'x', '[1,2,3]')")
    before = conn.execute("SELECT count(*) FROM information_schema.columns").fetchone()
    cases = [
        ({"database": {"table": "nopk"}}, "database.table = 'nopk': has no primary key"),
        ({"database": {"table": "missing"}}, "database.table = 'missing': no such table"),
        (
            {"database": {"table": "docs", "content_column": "body"}},
            "database.content_column = 'body': no such column",
        ),
        (
            {"database": {"table": "docs"}},
            "database.legacy_column = 'embedding': holds vector(3) but the legacy model "
            "all-MiniLM-L6-v2.f16.gguf gives 384",
        ),
    ]
    for sections, expected in cases:
        cfg = make_config(**sections)
        with pytest.raises(ConfigError) as e:
            commands.orchestrate(cfg, progress=False)
        assert expected in str(e.value)
    after = conn.execute("SELECT count(*) FROM information_schema.columns").fetchone()
    assert before == after, "a refused migration must not change the schema"
    assert (
        conn.execute("SELECT to_regclass('swarm.migrations')").fetchone()[0] is None
        or conn.execute("SELECT count(*) FROM swarm.migrations").fetchone()[0] == 0
    )
