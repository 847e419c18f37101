"""The real parts a figure runs on: a scratch embedded PostgreSQL and a Ray head, started on demand and
removed at the end; the corpus, tables and timed migrations."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.results import DIM, MINILM_F16, MINILM_Q8, Sizes
from swarm.core.errors import SwarmError
from swarm.core.log import get_logger

if TYPE_CHECKING:
    from swarm.core.config import Config

log = get_logger()


class Lab:
    """The bench's PostgreSQL server, Ray head, corpus and configs; :meth:`close` removes every trace."""

    def __init__(self, cfg: Config, sizes: Sizes) -> None:
        from model import provision

        self.base = cfg
        self.sizes = sizes
        self.model_dir = Path(provision.__file__).resolve().parent
        self.scratch = Path(tempfile.mkdtemp(prefix="swarm-bench-"))
        # pgserver runs PostgreSQL as its own user when we are root: it must be able to pass through.
        os.chmod(self.scratch, 0o711)
        self.state_dir = self.scratch / ".swarm"
        self._server: Any = None
        self._ray: dict[str, Any] | None = None
        self._docs: list[Any] | None = None
        self._tokens: list[int] | None = None
        self.shared: dict[str, Any] = {}  # what one figure leaves for another (the pipeline's migrators)

    # -- models ----------------------------------------------------------------------------------------------
    def models(self) -> tuple[Path, Path]:
        """(Q8_0, f16) MiniLM GGUFs, built by ``model prepare`` if missing (kept when valid)."""
        from model.provision import prepare

        if not (self.model_dir / MINILM_Q8).exists() or not (self.model_dir / MINILM_F16).exists():
            prepare(self.model_dir)
        return self.model_dir / MINILM_Q8, self.model_dir / MINILM_F16

    # -- PostgreSQL ------------------------------------------------------------------------------------------
    def admin_dsn(self) -> str:
        from swarm.store.embedded import embedded_server

        if self._server is None:
            self._server = embedded_server(self.state_dir)
        return str(self._server.get_uri())

    def database(self, name: str) -> str:
        """A fresh database ``name`` with pgvector; returns its DSN."""
        import psycopg
        from psycopg.conninfo import make_conninfo

        admin = self.admin_dsn()
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            c.execute(f'CREATE DATABASE "{name}"')
        dsn = make_conninfo(admin, dbname=name)
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE EXTENSION IF NOT EXISTS vector")
        return dsn

    def server_versions(self) -> dict[str, str | None]:
        if self._server is None:
            return {"postgres": None, "pgvector": None}
        import psycopg

        with psycopg.connect(self.admin_dsn(), autocommit=True) as c:
            pg = c.execute("SHOW server_version").fetchone()
            vec = c.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'").fetchone()
        return {"postgres": pg[0] if pg else None, "pgvector": vec[0] if vec else None}

    # -- Ray ---------------------------------------------------------------------------------------------------
    def ray_address(self) -> str:
        from agents import runtime

        if self._ray is None:
            self._ray = runtime.start_head(self.state_dir)
            runtime.connect(self.state_dir, self._ray["address"])
        return str(self._ray["address"])

    def kill_swarm(self) -> None:
        """No actors left (each figure's swarm carries its own config)."""
        if self._ray is not None:
            from agents import actors as agents_ray

            agents_ray.kill_all()
            _wait_until(lambda: not _named_actors(), timeout=30)

    def migrator_infos(self) -> list[dict[str, Any]]:
        import ray

        from agents import runtime

        handles = [runtime.get_actor(n) for n in runtime.list_agents("data-migrator-")]
        return list(ray.get([h.info.remote() for h in handles if h is not None]))

    def coordinator_info(self) -> dict[str, Any]:
        import ray

        from agents import runtime

        handle = runtime.get_actor(runtime.COORDINATOR)
        return dict(ray.get(handle.info.remote())) if handle is not None else {}

    # -- configs -------------------------------------------------------------------------------------------
    def config(self, dsn: str, table: str, **sections: dict[str, Any]) -> Config:
        """The user's config (knobs, env overrides) on the bench's database, Ray head and MiniLM models.

        Validators are off and the rollout manual: the figures time the migration, not the quality gates.
        """
        from pydantic import SecretStr

        from swarm.core.config import Config

        q8, f16 = self.models()
        forced: dict[str, dict[str, Any]] = {
            "database": {
                "dsn": SecretStr(dsn),
                "table": table,
                "id_column": "id",
                "content_column": "content",
                "legacy_column": "embedding",
            },
            "embedding": {
                "model": "all-MiniLM-L6-v2-Q8_0",
                "model_path": str(q8),
                "dimension": DIM,
                "truncate_dim": None,
                "document_prefix": "",
                "query_prefix": "",
            },
            "legacy": {"model": "all-MiniLM-L6-v2", "model_path": str(f16), "document_prefix": "", "query_prefix": ""},
            "swarm": {"ray_address": self.ray_address(), "validators": 0},
            "rollout": {"auto": False, "alerts": str(self.base.path(self.base.rollout.alerts))},
            "validation": {"queries": str(self.scratch / "queries.jsonl")},
        }
        for key, values in sections.items():
            forced.setdefault(key, {}).update(values)
        data = self.base.model_dump(mode="json")
        data["database"]["dsn"] = dsn
        cfg = Config(**data, source=self.base.source, root=str(self.scratch))
        # Assigned after construction so that SWARM_DATABASE__DSN and friends cannot point the bench elsewhere;
        # the other environment overrides (batch size, migrators, ...) stay, to measure a knob.
        for key, values in forced.items():
            section = getattr(cfg, key)
            for name, value in values.items():
                setattr(section, name, value)
        return cfg

    # -- corpus ----------------------------------------------------------------------------------------------
    def docs(self) -> list[Any]:
        """The demo corpus (real standard-library functions), built once."""
        if self._docs is None:
            from swarm.ops import corpus

            self._docs, _ = corpus.build()
        return self._docs

    def token_counts(self) -> list[int]:
        """Each corpus document's length in the model's tokens ([CLS] and [SEP] included)."""
        if self._tokens is None:
            from model.embedder import LlamaEmbedder

            q8, _ = self.models()
            with LlamaEmbedder(q8, cache_size=0, n_threads=1) as e:
                self._tokens = [len(e.tokenize(d.content)) for d in self.docs()]
        return self._tokens

    def code_texts(self, n: int, lo: int = 176, hi: int = 256) -> tuple[list[str], list[int]]:
        """``n`` functions of ``lo``..``hi`` tokens (mean ~215; under sentence-transformers' 256-token limit, so
        neither side truncates), evenly spread over the corpus. Returns (texts, token counts)."""
        pool = [(d.content, t) for d, t in zip(self.docs(), self.token_counts(), strict=True) if lo <= t <= hi]
        if len(pool) < n:
            raise SwarmError(f"the corpus has {len(pool)} functions of {lo}..{hi} tokens; {n} needed")
        step = len(pool) / n
        picked = [pool[int(i * step)] for i in range(n)]
        return [p[0] for p in picked], [p[1] for p in picked]

    # -- teardown ---------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the actors, the Ray head and PostgreSQL this bench started; remove the scratch directory."""
        from swarm.store.embedded import stop_embedded

        if self._ray is not None:
            import ray

            from agents import actors as agents_ray
            from agents import runtime

            with contextlib.suppress(Exception):
                agents_ray.kill_all()
            with contextlib.suppress(Exception):
                ray.shutdown()
            with contextlib.suppress(Exception):
                runtime.stop_head(self.state_dir)
            temp_dir = self._ray.get("temp_dir")
            if temp_dir and Path(temp_dir).name.startswith("swarm-ray-"):
                shutil.rmtree(temp_dir, ignore_errors=True)
            self._ray = None
        if self._server is not None:
            with contextlib.suppress(Exception):
                stop_embedded(self.state_dir)
            self._server = None
        shutil.rmtree(self.scratch, ignore_errors=True)


def _named_actors() -> list[str]:
    import ray

    return [n for n in ray.util.list_named_actors() if n.startswith(("data-migrator-", "validator-", "coordinator"))]


def niceness(pid: int) -> int | None:
    """The niceness of process ``pid`` (a migrator's, say), or None when it is gone."""
    try:
        return os.getpriority(os.PRIO_PROCESS, pid)
    except OSError:
        return None


def _wait_until(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


# --------------------------------------------------------------------------------------------------------------
# Tables and migrations
# --------------------------------------------------------------------------------------------------------------
def _unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def create_docs_table(
    dsn: str,
    table: str,
    rows: Sequence[tuple[int, str]] | Iterator[tuple[int, str]],
    *,
    seed: int = 7,
    chunk: int = 20_000,
    dim: int = DIM,
) -> int:
    """A table shaped like the demo's (``id bigint`` key, ``content text``, legacy ``embedding vector(dim)``,
    384 by default).

    The legacy vectors are random unit vectors: a migration never reads them (only their checksum), and the
    validators that would compare them are off in these figures. Returns the row count.
    """
    from psycopg import sql

    from swarm.store.db import connect, register_vector

    rng = np.random.default_rng(seed)
    t = sql.Identifier(table)
    n = 0
    with connect(dsn) as conn:
        register_vector(conn)
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(t))
        conn.execute(
            sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, content text NOT NULL, embedding vector({}))").format(
                t, sql.Literal(dim)
            )
        )
        it = iter(rows)
        with conn.cursor() as cur:
            while True:
                part = [r for _, r in zip(range(chunk), it, strict=False)]
                if not part:
                    break
                vecs = _unit_rows(rng, len(part), dim)
                with (
                    conn.transaction(),
                    cur.copy(
                        sql.SQL("COPY {} (id, content, embedding) FROM STDIN WITH (FORMAT BINARY)").format(t)
                    ) as cp,
                ):
                    cp.set_types(["bigint", "text", "vector"])
                    for (i, text), v in zip(part, vecs, strict=True):
                        cp.write_row((i, text, v))
                n += len(part)
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(t))
    return n


@dataclass
class Run:
    """One ``orchestrate`` call, timed."""

    code: int
    migration_id: int | None
    rows: int
    wall_s: float  # the call, including the final status poll and the report
    to_finish_s: float | None  # from the call to the migration's finished_at (no poll granularity, no report)
    phases: dict[str, float]
    status: dict[str, Any]


def orchestrate_timed(
    cfg: Config, name: str, *, rehearse: bool = False, before: Callable[[], Any] | None = None
) -> Run:
    """``before()`` (e.g. ``init``) then ``orchestrate``; times from before ``before``."""
    from swarm import commands

    t0_wall, t0 = time.time(), time.perf_counter()
    if before is not None:
        before()
    code = commands.orchestrate(cfg, name, rehearse=rehearse, progress=False)
    wall = time.perf_counter() - t0
    st = commands.status(cfg)
    mid = st.get("id")
    finished, phases = _timeline(cfg, mid, t0_wall) if mid is not None else (None, {})
    return Run(
        code=code,
        migration_id=mid,
        rows=int(st.get("rows_done") or 0),
        wall_s=wall,
        to_finish_s=(finished - t0_wall) if finished else None,
        phases=phases,
        status=st,
    )


def _timeline(cfg: Config, mid: int, start: float) -> tuple[float | None, dict[str, float]]:
    """(finished_at as epoch seconds, seconds spent in each phase) from the migration's own records.

    ``preflight`` runs from ``start`` (epoch seconds) to the migration's record: checks, the swarm, the legacy
    checksum; ``plan`` is the DDL and the shards, ``planned`` the wait for the coordinator.
    """
    from swarm.store.db import connect
    from swarm.store.embedded import resolve_dsn

    with connect(resolve_dsn(cfg)) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM created_at), extract(epoch FROM finished_at) FROM swarm.migrations "
            "WHERE id = %s",
            [mid],
        ).fetchone()
        events = conn.execute(
            "SELECT extract(epoch FROM at), coalesce(detail->>'phase', kind) FROM swarm.events "
            "WHERE migration_id = %s AND kind IN ('state', 'planned') ORDER BY id",
            [mid],
        ).fetchall()
    if row is None:
        return None, {}
    created = float(row[0])
    finished = float(row[1]) if row[1] is not None else None
    phases: dict[str, float] = {"preflight": round(created - start, 3)}
    marks = [(created, "plan")] + [(float(at), str(p)) for at, p in events]
    for (a, name), (b, _) in zip(marks, marks[1:], strict=False):
        phases[name] = round(phases.get(name, 0.0) + b - a, 3)
    return finished, phases
