"""Decommission: refused before 100% rollout with passing gates; afterwards the legacy embeddings are
archived (table and file), the legacy column, its index and the sync trigger are gone, and the audit report
is written."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import psycopg
import pytest

from swarm import migration as mig
from swarm.core.errors import MigrationError
from swarm.ops.decommission import decommission
from swarm.serving.rollout import set_percent
from tests.test_router import Migrated, migrated, quality_root  # noqa: F401  (fixtures)


def _legacy_state(dsn: str, m: mig.Migration) -> tuple[bool, str | None, int]:
    """(legacy column exists, its checksum, archive tables)."""
    with psycopg.connect(dsn, autocommit=True) as c:
        exists = (
            c.execute(
                "SELECT count(*) FROM information_schema.columns WHERE table_name = 'documents' AND column_name = %s",
                [m.target.legacy_column],
            ).fetchone()[0]
            == 1
        )
        archives = c.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'swarm' AND tablename LIKE 'archive%'"
        ).fetchone()[0]
        return exists, mig.legacy_checksum(c, m.target) if exists else None, archives


def test_decommission_is_refused_before_100_percent(migrated: Migrated) -> None:  # noqa: F811
    m = migrated.migration()
    set_percent(migrated.db(), m, 50)
    with pytest.raises(MigrationError) as e:
        decommission(migrated.cfg, migrated.dsn)
    assert "serves 50% of queries; roll out to 100% first" in str(e.value)
    assert _legacy_state(migrated.dsn, m) == (True, migrated.legacy_checksum, 0)


def test_decommission_is_refused_without_passing_gates_or_with_the_flag_off(
    migrated: Migrated,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    m = migrated.migration()
    set_percent(migrated.db(), m, 100)
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        # A later validation failed (a validator recorded it while traffic was at 100%).
        mig.event(c, m.id, "validation", failures=["MRR@10 dropped by 0.300"], partial=False)
    with pytest.raises(MigrationError, match="the last validation failed: MRR@10 dropped by 0.300"):
        decommission(migrated.cfg, migrated.dsn)
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        mig.event(c, m.id, "validation", failures=[], partial=False)
    monkeypatch.setenv("USE_NOMIC_EMBEDDINGS", "false")
    with pytest.raises(MigrationError, match="USE_NOMIC_EMBEDDINGS=false"):
        decommission(migrated.config(), migrated.dsn)
    assert _legacy_state(migrated.dsn, m) == (True, migrated.legacy_checksum, 0)


def test_decommission_archives_drops_and_reports(migrated: Migrated, tmp_path: Path) -> None:  # noqa: F811
    from model.embedder import LlamaEmbedder
    from swarm.serving.router import Router

    m = migrated.migration()
    set_percent(migrated.db(), m, 100)
    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        legacy_before = {r[0]: r[1] for r in c.execute("SELECT id::text, embedding::text FROM documents").fetchall()}
        # The application edits a row after the migration finished: the trigger clears its new vector.
        c.execute("UPDATE documents SET content = content || %s WHERE id = 7", ["\n# edited after the migration"])
        edited = c.execute("SELECT content, nomic_embedding FROM documents WHERE id = 7").fetchone()
        assert edited[1] is None

    r = decommission(migrated.cfg, migrated.dsn, archive=str(tmp_path / "legacy.jsonl.gz"))

    with psycopg.connect(migrated.dsn, autocommit=True) as c:
        columns = {
            x[0]
            for x in c.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'documents'"
            ).fetchall()
        }
        indexes = {x[0] for x in c.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'documents'")}
        triggers = [
            x[0]
            for x in c.execute(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = 'documents'::regclass AND NOT tgisinternal"
            ).fetchall()
        ]
        archive = {
            x[0]: x[1] for x in c.execute(f"SELECT id::text, embedding::text FROM {r['archive_table']}").fetchall()
        }
        new7 = c.execute("SELECT nomic_embedding FROM documents WHERE id = 7").fetchone()[0]
        phase = c.execute("SELECT phase FROM swarm.migrations WHERE id = %s", [m.id]).fetchone()[0]
    assert "embedding" not in columns and "nomic_embedding" in columns
    assert "documents_embedding_idx" not in indexes and r["dropped_indexes"] == ["documents_embedding_idx"]
    # The sync trigger stays: the swarm keeps following the table, so the new column stays fresh (the archive's
    # capture trigger is gone with the legacy column).
    assert triggers == [f"swarm_sync_{m.id}"], triggers
    assert archive == legacy_before
    assert r["archived_rows"] == 60 and r["archive_checksum"] == r["legacy_checksum"] == migrated.legacy_checksum
    assert phase == "decommissioned"

    # The edited row was embedded again, from its new content, with the new model.
    with LlamaEmbedder(migrated.cfg.embedding.model_path, cache_size=0) as e:
        expected = e.embed([edited[0]])[0]
    assert r["re_embedded_rows"] == 1
    assert float(np.dot(np.asarray(json.loads(new7), dtype=np.float32), expected)) > 0.999

    with gzip.open(tmp_path / "legacy.jsonl.gz", "rt") as f:
        lines = [json.loads(x) for x in f]
    assert len(lines) == r["archive_file_rows"] == 60
    first = lines[0]
    assert np.allclose(first["embedding"], json.loads(legacy_before[first["id"]]))

    # Searches keep working, on the new column only.
    router = Router(migrated.cfg, migrated.dsn)
    result = router.search(migrated.queries()[0], k=5, caller="after")
    router.close()
    assert result.arm == "new" and len(result.ids) == 5

    report = json.loads(Path(r["report"]["json"]).read_text())
    assert report["decommission"]["archived_rows"] == 60
    assert report["validation"]["failures"] == []
    assert report["backfill"]["rows"] == 60  # the backfill; the re-embedded row came after the migration ended
    assert report["status"]["rollout_percent"] == 100
    md = Path(r["report"]["markdown"]).read_text()
    assert "## Decommission" in md and "## Validation" in md
    for chart in ("throughput", "shards", "metrics"):
        png = Path(r["report"][chart])
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"({png.name})" in md

    with pytest.raises(MigrationError, match="already decommissioned"):
        decommission(migrated.cfg, migrated.dsn)


def test_the_rollback_command_says_what_it_did_in_one_line(
    migrated: Migrated,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``python -m swarm rollback``'s line: the share, the column, and the legacy column proved row by row."""
    import argparse

    from swarm.cli import handlers

    code = handlers.rollback(argparse.Namespace(reason="the test", keep_data=False), migrated.cfg)
    said = capsys.readouterr().out
    assert code == 0, said
    assert "new column dropped" in said and "legacy column untouched by swarm (60 rows as planned" in said, said
