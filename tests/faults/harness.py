"""What the scenarios share: tables with an audit of vector writes, the end-of-run count (lost, stale, twice),
the Ray-side helpers (pids, waits), and the secret scanner.

*Embedded twice* is counted by a test-side ``AFTER UPDATE`` trigger that records every committed write of a
non-NULL vector with the md5 of the content it was written for: a (row, content) pair written more than once was
embedded twice. The trigger reads the row as jsonb, so it can be installed before the migration adds its column
(the scenarios then run ``orchestrate`` exactly as a user does).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from swarm import migration as mig
from swarm.core.config import Config
from swarm.store.sql import Target, regclass_text, table_ident
from tests.faults.table import Outcome
from tests.support.texts import code_text

REPO = Path(__file__).resolve().parents[2]


def md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Tables and the audit of vector writes
# ---------------------------------------------------------------------------------------------------------------
AUDIT = [
    """CREATE TABLE IF NOT EXISTS public.chaos_audit (
        tbl text NOT NULL, row_id text NOT NULL, content_md5 text,
        at timestamptz NOT NULL DEFAULT clock_timestamp())""",
    """CREATE OR REPLACE FUNCTION public.chaos_audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE n jsonb := to_jsonb(NEW);
BEGIN
    -- TG_ARGV: the new column, the key, the content. A vector is a JSON string; NULL (or no column yet) is not.
    IF jsonb_typeof(n -> TG_ARGV[0]) = 'string' THEN
        INSERT INTO public.chaos_audit (tbl, row_id, content_md5)
        VALUES (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, n ->> TG_ARGV[1], md5(n ->> TG_ARGV[2]));
    END IF;
    RETURN NULL;
END $$""",
]


def install_audit(
    conn: psycopg.Connection,
    table: str,
    *,
    new_column: str = "nomic_embedding",
    id_column: str = "id",
    content_column: str = "content",
) -> None:
    for stmt in AUDIT:
        conn.execute(stmt)
    conn.execute(
        sql.SQL(
            "CREATE TRIGGER chaos_audit AFTER UPDATE ON {t} FOR EACH ROW "
            "EXECUTE FUNCTION public.chaos_audit_fn({a}, {b}, {c})"
        ).format(
            t=table_ident(table), a=sql.Literal(new_column), b=sql.Literal(id_column), c=sql.Literal(content_column)
        )
    )


def create_docs(
    conn: psycopg.Connection, table: str, rows: int, *, seed: int = 0, extra: Iterable[tuple[int, str | None]] = ()
) -> dict[str, str | None]:
    """``table (id bigint PRIMARY KEY, content text, embedding vector(384))`` with ``rows`` texts plus ``extra``
    (id, content) rows, legacy vectors filled, the audit trigger installed. Returns {id: content}."""
    from pgvector.psycopg import register_vector

    register_vector(conn)
    rng = random.Random(seed)
    t = table_ident(table)
    conn.execute(sql.SQL("CREATE TABLE {t} (id bigint PRIMARY KEY, content text, embedding vector(384))").format(t=t))
    data: dict[str, str | None] = {str(i): code_text(rng, f"f{i}") for i in range(1, rows + 1)}
    data.update({str(k): v for k, v in extra})
    legacy = np.ones(384, dtype=np.float32) / np.sqrt(384)
    with (
        conn.cursor() as cur,
        cur.copy(sql.SQL("COPY {t} (id, content, embedding) FROM STDIN WITH (FORMAT BINARY)").format(t=t)) as copy,
    ):
        copy.set_types(["bigint", "text", "vector"])
        for k, v in data.items():
            copy.write_row((int(k), v, legacy))
    conn.execute(sql.SQL("ANALYZE {t}").format(t=t))
    install_audit(conn, table)
    return data


def snapshot(conn: psycopg.Connection, table: str | None = None) -> dict[str, Any]:
    """The schema of every user schema (columns, triggers, functions) and, given a table, a digest of its rows:
    what a refused migration must leave exactly as it was."""
    cols = conn.execute(
        "SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE a.attnum > 0 AND NOT a.attisdropped AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
        "AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' ORDER BY 1, 2, 3"
    ).fetchall()
    triggers = conn.execute(
        "SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2"
    ).fetchall()
    functions = conn.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND p.proname NOT LIKE 'chaos%' "
        "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e') ORDER BY 1"
    ).fetchall()
    schemas = conn.execute(
        "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg_%' AND nspname <> 'information_schema' ORDER BY 1"
    ).fetchall()
    snap: dict[str, Any] = {"columns": cols, "triggers": triggers, "functions": functions, "schemas": schemas}
    if table is not None:
        snap["rows"] = conn.execute(
            sql.SQL("SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {t} t").format(
                t=table_ident(table)
            )
        ).fetchone()
    return snap


# ---------------------------------------------------------------------------------------------------------------
# The count at the end
# ---------------------------------------------------------------------------------------------------------------
def tally(
    out: Outcome,
    conn: psycopg.Connection,
    m: mig.Migration,
    embedder: Any,
    expected: dict[str, str | None] | None = None,
) -> dict[str, list[str]]:
    """Fill ``out`` from the table as it is now; returns the ids behind each non-zero count (for messages).

    * lost: a row with no vector and no dead letter for its current content; with ``expected`` (what the
      application last wrote), also a row missing, a row whose content is not what was written, a row that
      should not be there;
    * stale: a vector whose cosine with a fresh embedding of the row's current content is <= 0.999 (or any
      vector on a row that has nothing to embed);
    * twice: a row with some content for which more than one vector write committed.
    """
    from pgvector.psycopg import register_vector

    register_vector(conn)
    t: Target = m.target
    rows = conn.execute(
        sql.SQL("SELECT {id}::text, {c}, {n} FROM {t}").format(id=t.id, c=t.content, n=t.new, t=t.t)
    ).fetchall()
    dead = {
        r[0]: (r[1], r[2])
        for r in conn.execute(
            "SELECT row_id, reason, content_md5 FROM swarm.dead_letters WHERE migration_id = %s", [m.id]
        ).fetchall()
    }
    ids: dict[str, list[str]] = {"lost": [], "stale": [], "twice": []}
    out.rows_total = len(rows)
    out.dead_letters = Counter()
    to_check: list[tuple[str, str, np.ndarray]] = []
    for rid, content, vec in rows:
        if vec is None:
            dl = dead.get(rid)
            current = md5(content) if content is not None else None
            if dl is not None and dl[1] == current:
                out.dead_letters[dl[0]] += 1
            else:
                ids["lost"].append(rid)
            continue
        out.rows_embedded += 1
        v = np.asarray(vec.to_numpy() if hasattr(vec, "to_numpy") else vec, dtype=np.float32)
        if content is None or not content.strip():
            ids["stale"].append(rid)
        else:
            to_check.append((rid, content, v))
    for start in range(0, len(to_check), 64):
        part = to_check[start : start + 64]
        fresh, errors = embedder.embed_many([c for _, c, _ in part])
        for (rid, _, v), e, err in zip(part, fresh, errors, strict=True):
            cos = float(np.dot(v, e) / (np.linalg.norm(v) * np.linalg.norm(e) or 1.0))
            if err is not None or cos <= 0.999:
                ids["stale"].append(rid)
    if expected is not None:
        have = {rid: content for rid, content, _ in rows}
        for rid, content in expected.items():
            if content is None:  # deleted by the application
                if rid in have:
                    ids["lost"].append(rid)
            elif have.get(rid, object()) != content:
                ids["lost"].append(rid)
        ids["lost"] += [rid for rid in have if rid not in expected]
    twice = conn.execute(
        "SELECT DISTINCT row_id FROM (SELECT row_id FROM public.chaos_audit WHERE tbl = %s "
        "GROUP BY row_id, content_md5 HAVING count(*) > 1) d",
        [audit_name(conn, t.table)],
    ).fetchall()
    ids["twice"] = [r[0] for r in twice]
    ids["lost"] = sorted(set(ids["lost"]))
    out.rows_lost, out.rows_stale, out.rows_twice = len(ids["lost"]), len(ids["stale"]), len(ids["twice"])
    return ids


def audit_name(conn: psycopg.Connection, table: str) -> str:
    """``schema.table`` as the audit trigger records it (TG_TABLE_SCHEMA.TG_TABLE_NAME)."""
    from swarm.store.sql import split_table

    r = conn.execute(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = to_regclass(%s)",
        [regclass_text(*split_table(table))],
    ).fetchone()
    return r[0] if r else table


def vector_writes(conn: psycopg.Connection, table: str) -> list[tuple[str, float]]:
    """(row id, epoch seconds) of every committed vector write on ``table``, in time order."""
    return [
        (r[0], float(r[1]))
        for r in conn.execute(
            "SELECT row_id, extract(epoch FROM at) FROM public.chaos_audit WHERE tbl = %s ORDER BY at",
            [audit_name(conn, table)],
        ).fetchall()
    ]


# ---------------------------------------------------------------------------------------------------------------
# Ray side
# ---------------------------------------------------------------------------------------------------------------
def actor_pid(name: str) -> int:
    """The pid of the process that hosts the named swarm actor now."""
    import ray

    handle = ray.get_actor(name, namespace="swarm")
    return int(ray.get(handle.__ray_call__.remote(lambda self: os.getpid()), timeout=60))


def wait_for(pred: Callable[[], Any], timeout: float, what: str, poll: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def status_when(cfg: Config, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
    from swarm import commands

    last: dict[str, Any] = {}

    def check() -> dict[str, Any] | None:
        nonlocal last
        last = commands.status(cfg)
        return last if pred(last) else None

    try:
        return wait_for(check, timeout, what, poll=0.2)
    except AssertionError as e:
        brief = {k: last.get(k) for k in ("state", "phase", "rows_done", "rows_total", "reason")}
        raise AssertionError(f"{e}; last status {brief}") from None


def toml_for(sections: dict[str, dict[str, Any]]) -> str:
    """A TOML file for ``sections`` (strings, numbers, booleans, lists of those)."""
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        for k, v in values.items():
            lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


def start_writer(
    dsn: str, table: str, out: str | Path, *, rows: int, rate: float, until: str, seconds: float, seed: int
) -> subprocess.Popen[bytes]:
    """The application in another process (tests/support/writer.py): updates, inserts and deletes ``table`` at
    ``rate`` changes/s until ``until`` (``backfill``, ``index``, ``terminal``, ``never``) or ``seconds``, each change
    logged to ``out``."""
    args = ["--dsn", dsn, "--table", table, "--ids", f"1-{rows}", "--rate", str(rate), "--until", until]
    args += ["--seconds", str(seconds), "--seed", str(seed), "--out", str(out)]
    return subprocess.Popen([sys.executable, "-m", "tests.support.writer", *args], cwd=REPO, env=cli_env())


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWARM_")}
    env["PYTHONPATH"] = str(REPO)
    return env


# ---------------------------------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------------------------------
def find_secret(secret: str, *, files: Iterable[Path] = (), texts: dict[str, str] | None = None) -> list[str]:
    """Where ``secret`` shows: file paths and the names of ``texts`` that contain it."""
    needle = secret.encode()
    found: list[str] = []
    for f in files:
        try:
            if f.is_file() and needle in f.read_bytes():
                found.append(str(f))
        except OSError:
            continue
    for name, text in (texts or {}).items():
        if secret in text:
            found.append(name)
    return found


def ray_log_files(head: dict[str, Any]) -> list[Path]:
    logs = Path(head["temp_dir"]) / "session_latest" / "logs"
    return [p for p in logs.rglob("*") if p.is_file()] if logs.exists() else []


def dashboard_texts(head: dict[str, Any]) -> dict[str, str]:
    """What the Ray dashboard shows about actors and tasks (its JSON API), by endpoint."""
    import urllib.request

    out: dict[str, str] = {}
    base = head.get("dashboard")
    if not base:
        return out
    for path in (
        "/api/v0/actors?detail=1&limit=1000",
        "/logical/actors",
        "/api/v0/tasks?detail=1&limit=1000",
        "/nodes?view=summary",
    ):
        try:
            out[f"dashboard {path}"] = urllib.request.urlopen(base + path, timeout=30).read().decode("utf-8", "replace")
        except OSError as e:
            out[f"dashboard {path} (unreachable)"] = str(e)
    return out


def process_cmdlines() -> dict[str, str]:
    """Every process's command line and environment (what `ps` and /proc show other users)."""
    import psutil

    out: dict[str, str] = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            out[f"cmdline of pid {p.info['pid']}"] = " ".join(p.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def db_texts(conn: psycopg.Connection) -> dict[str, str]:
    """swarm's bookkeeping as text: migration records (their config), events, shard errors, dead letters."""
    out: dict[str, str] = {}
    for name, q in {
        "swarm.migrations": "SELECT coalesce(string_agg(m::text, E'\\n'), '') FROM swarm.migrations m",
        "swarm.events": "SELECT coalesce(string_agg(e::text, E'\\n'), '') FROM swarm.events e",
        "swarm.shards": "SELECT coalesce(string_agg(s::text, E'\\n'), '') FROM swarm.shards s",
        "swarm.dead_letters": "SELECT coalesce(string_agg(d::text, E'\\n'), '') FROM swarm.dead_letters d",
        "swarm.agents": "SELECT coalesce(string_agg(a::text, E'\\n'), '') FROM swarm.agents a",
    }.items():
        if conn.execute("SELECT to_regclass(%s)", [name]).fetchone()[0] is not None:
            out[name] = conn.execute(q).fetchone()[0]
    return out


def capture(fn: Callable[[], Any]) -> tuple[Any, str]:
    """Run ``fn`` with stdout and stderr captured; returns (its result, what it printed)."""
    import contextlib

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        result = fn()
    return result, buf.getvalue()


def cli(args: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``python -m swarm ARGS`` in this process (``swarm.cli.main``, what the console script runs) with the
    working directory ``cwd``, no ``SWARM_*`` variables but ``env``; returns (exit code, stdout, stderr)."""
    import contextlib

    from swarm import cli as swarm_cli
    from swarm.core import log as swarm_log

    saved_env = {k: os.environ.pop(k) for k in [k for k in os.environ if k.startswith("SWARM_")]}
    os.environ.update(env or {})
    saved_cwd = Path.cwd()
    out, err = io.StringIO(), io.StringIO()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            swarm_log._configured = None  # structlog binds the stream at configure time: bind the captured one
            code = swarm_cli.main(args)
    finally:
        os.chdir(saved_cwd)
        for k in env or {}:
            os.environ.pop(k, None)
        os.environ.update(saved_env)
        swarm_log._configured = None
    return code, out.getvalue(), err.getvalue()


def blocked_writers(conn: psycopg.Connection) -> list[str]:
    """Migrators whose write transaction waits for a row lock (mid-batch: vectors staged, UPDATE waiting)."""
    return [
        r[0].removeprefix("swarm:").removesuffix(":w")
        for r in conn.execute(
            "SELECT application_name FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name LIKE 'swarm:data-migrator-%:w' AND wait_event_type = 'Lock'"
        ).fetchall()
    ]


def running_shard_of(st: dict[str, Any], worker: str) -> int | None:
    for sh in st["shards"]:
        if sh["state"] == "running" and sh["worker"] == worker:
            return int(sh["id"])
    return None
