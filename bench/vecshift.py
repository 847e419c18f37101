"""``migration_ratio_vs_vecshift``: the same migration by swarm and by vecshift (PyPI), the closest peer tool.

Both sides migrate a fresh copy of the same demo table (same rows, same random legacy vectors, each in its own
database on the bench's PostgreSQL) to the same GGUF (MiniLM Q8_0) on the same cores:

- swarm: ``init`` and the migrators spawned first (their start, model load included, is timed apart), then
  ``orchestrate`` from the call to the migration's ``finished_at`` (preflight, plan, backfill, drain, index),
  with ``shard_rows`` lowered if need be so that every migrator has work;
- vecshift: ``python -m llama_cpp.server`` started first (its start, model load included, is timed apart), with
  the threads the swarm's migrators have between them, then ``vecshift apply --yes --json`` from the call to
  its exit (plan checks, column, trigger, backfill, index, its final checks).

So each side's headline time is its migration with its model loaded, and the start of the model is reported
for both (and a ratio with it counted on both sides). vecshift is a CLI: it is driven with ``--no-env-file``,
its DSN in ``VECSHIFT_DSN``, stdin from ``/dev/null`` (a prompt would exit 2, never hang), ``--json`` events
read unbuffered (``PYTHONUNBUFFERED``) and stamped on arrival; the job file is written here (JSON is YAML).
Afterwards both tables are checked: every row has a 384-dim new vector and the new column a valid index.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.lab import Lab, create_docs_table, niceness, orchestrate_timed
from bench.results import DIM, Result, Target, ratio, version
from swarm.core.errors import SwarmError
from swarm.core.log import get_logger

if TYPE_CHECKING:
    from swarm.core.config import Config

log = get_logger()

FIGURE = "migration_ratio_vs_vecshift"
#: The name vecshift is given for the model (``compat/<name>``) and the server's alias: vecshift knows its
#: width (384) without calling the model, so ``apply`` needs no ``plan --probe`` and sends no ``dimensions``.
MODEL_NAME = "all-minilm"
#: Texts per embedding request. vecshift keeps 4 requests in flight (a chunk is 4 x this many rows) and gives
#: each 120 s (not configurable) before it retries and bisects the whole chunk; llama_cpp.server computes one
#: request at a time, so the 4th waits for the other 3. 16 keeps a request far below that on a loaded 2-core
#: machine; the server packs its decodes by tokens (n_batch), not by request, so the size costs nothing else.
REQUEST_TEXTS = 16
TARGET_COLUMN = "embedding_v2"  # vecshift's default
SERVER_START_TIMEOUT_S = 180.0
SERVER_STOP_GRACE_S = 15.0  # uvicorn waits for a request in flight on SIGTERM; then SIGKILL
APPLY_TIMEOUT_S = 3600.0


# --------------------------------------------------------------------------------------------------------------
# Pure parts: the server's command line, the job file, vecshift's JSON events (tested in tests/test_bench.py)
# --------------------------------------------------------------------------------------------------------------
def server_command(
    python: str, model: str | os.PathLike[str], *, port: int, threads: int, max_tokens: int, flash_attn: bool
) -> list[str]:
    """``python -m llama_cpp.server`` serving ``model`` for embeddings on 127.0.0.1:``port``.

    ``n_threads_batch`` is set too: embedding is a batch decode, and its default is every core.
    ``n_ctx = n_batch = n_ubatch = max_tokens``: ``Llama.embed`` silently cuts each text to ``n_batch`` tokens,
    a BERT model must see a sequence whole in one ubatch, and ``Llama`` clamps ``n_batch`` to ``n_ctx``; so
    ``max_tokens`` is the per-text limit, to be set to the swarm's (``embedding.max_tokens``, capped by the
    model's context). Pooling comes from the GGUF (the server has no flag for it).
    """
    n = str(max_tokens)
    return [
        python,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        MODEL_NAME,
        "--embedding",
        "true",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        "--n_ctx",
        n,
        "--n_batch",
        n,
        "--n_ubatch",
        n,
        "--flash_attn",
        "true" if flash_attn else "false",
        "--verbose",
        "false",
    ]


def model_spec(url: str, *, batch: int = REQUEST_TEXTS) -> str:
    """vecshift's model spec for an OpenAI-compatible server at ``url`` (``.../v1``), free of charge."""
    if "," in url:
        raise ValueError(f"{url!r}: vecshift splits its model spec on commas")
    return f"compat/{MODEL_NAME},url={url},price=0,batch={batch}"


def job_document(
    *,
    name: str,
    table: str,
    url: str,
    vector_column: str = "embedding",
    text_column: str = "content",
    target_column: str = TARGET_COLUMN,
    index: str = "hnsw",
    batch: int = REQUEST_TEXTS,
) -> dict[str, Any]:
    """vecshift's job file (``vecshift.yaml``; written as JSON, which is YAML) for a pgvector table whose DSN is
    in ``VECSHIFT_DSN``. ``metric: cosine``: llama_cpp.server returns unnormalized vectors."""
    return {
        "version": 1,
        "name": name,
        "source": {
            "type": "pgvector",
            "dsn_env": "VECSHIFT_DSN",
            "table": table,
            "vector_column": vector_column,
            "text_column": text_column,
        },
        "target": {"column": target_column, "vector_type": "vector", "index": index, "metric": "cosine"},
        "model": model_spec(url, batch=batch),
    }


def parse_events(lines: Iterable[tuple[float, str]]) -> list[dict[str, Any]]:
    """vecshift's ``--json`` output, one ``(seconds since the call, line)`` per line, as the JSON objects it
    printed, each with its arrival time in ``_t`` (vecshift's events carry none). Other lines are skipped."""
    events = []
    for t, line in lines:
        text = line.strip()
        if not text.startswith("{"):
            continue
        try:
            ev = json.loads(text)
        except ValueError:
            continue
        if isinstance(ev, dict):
            events.append({**ev, "_t": round(t, 3)})
    return events


def summarize_apply(events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What one ``vecshift apply --json`` did, from its events.

    ``result`` is its last word (status, rows written and failed, remaining, tokens); the times come from the
    arrival stamps: ``setup_s`` from the call to ``start`` (imports, plan checks, column, trigger),
    ``backfill_s`` from ``start`` to the last ``pass``, ``index_s`` from ``index`` building to built.
    """
    result: dict[str, Any] = next((e for e in reversed(events) if e.get("event") == "result"), {})

    def first(kind: str, **match: Any) -> float | None:
        return next(
            (e["_t"] for e in events if e.get("event") == kind and all(e.get(k) == v for k, v in match.items())),
            None,
        )

    start = first("start")
    passes = [e for e in events if e.get("event") == "pass"]
    building, built = first("index", state="building"), first("index", state="built")
    return {
        "status": result.get("status"),
        "rows_written": int(result.get("rows_written") or 0),
        "rows_failed": int(result.get("rows_failed") or 0),
        "remaining": result.get("remaining"),
        "tokens": result.get("tokens"),
        "index": result.get("index"),
        "message": result.get("message"),
        "vecshift_seconds": result.get("seconds"),
        "pending_at_start": next((e.get("pending") for e in events if e.get("event") == "start"), None),
        "chunks": sum(1 for e in events if e.get("event") == "batch"),
        "passes": len(passes),
        "setup_s": start,
        "backfill_s": round(passes[-1]["_t"] - start, 3) if passes and start is not None else None,
        "index_s": round(built - building, 3) if built is not None and building is not None else None,
    }


# --------------------------------------------------------------------------------------------------------------
# The figure
# --------------------------------------------------------------------------------------------------------------
def fig_vecshift(lab: Lab) -> list[Result]:
    from swarm import commands

    cli = _vecshift_cli()
    n = lab.sizes.vecshift_rows
    docs = lab.docs()
    if len(docs) < n:
        raise SwarmError(f"the corpus has {len(docs)} documents; {n} needed")
    rows = [(d.id, d.content) for d in docs[:n]]
    # One database each, both filled before either side runs: the same rows and the same legacy vectors (seed).
    dsn_swarm, dsn_peer = lab.database("bench_vs_swarm"), lab.database("bench_vs_vecshift")
    create_docs_table(dsn_swarm, "documents", rows)
    create_docs_table(dsn_peer, "documents", rows)
    tokens = lab.token_counts()[:n]
    q8, _ = lab.models()

    # -- swarm ----------------------------------------------------------------------------------------------
    from agents.actors import placement

    cfg = lab.config(dsn_swarm, "documents")
    migrators = cfg.swarm.migrators
    # Same cores: every migrator must have work, so at least two shards each (a --quick table is smaller than
    # one shard of the demo's config, and one migrator would embed it alone on half the threads).
    shard_rows = min(cfg.swarm.shard_rows, -(-n // (2 * migrators)))
    if shard_rows != cfg.swarm.shard_rows:
        cfg = lab.config(dsn_swarm, "documents", swarm={"shard_rows": shard_rows})
    _, threads_each = placement(cfg, migrators)
    threads = migrators * threads_each
    max_tokens = _max_tokens(cfg, q8)
    lab.kill_swarm()
    load_sw0 = os.getloadavg()
    t = time.perf_counter()
    commands.init(cfg)
    commands.spawn(cfg, "data-migrator", migrators)
    swarm_start_s = time.perf_counter() - t
    infos = lab.migrator_infos()
    nice = max((p for p in (niceness(i["pid"]) for i in infos) if p is not None), default=0)
    load_sw1 = os.getloadavg()
    run = orchestrate_timed(cfg, "bench: vs vecshift")
    load_sw2 = os.getloadavg()
    infos = lab.migrator_infos()
    lab.kill_swarm()
    if run.code != 0 or run.rows != n or run.to_finish_s is None:
        raise SwarmError(
            f"the swarm's migration ended with exit code {run.code}, {run.rows}/{n} rows: {run.status.get('reason')}"
        )
    swarm_check = _check_table(dsn_swarm, "documents", cfg.database.new_column, n)
    swarm_s = run.to_finish_s

    # -- vecshift ------------------------------------------------------------------------------------------------
    work = lab.scratch / "vecshift"
    (work / "logs").mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    job_file = work / "vecshift.yaml"
    job_file.write_text(json.dumps(job_document(name="bench", table="documents", url=url), indent=2) + "\n")
    server = server_command(
        sys.executable, q8, port=port, threads=threads, max_tokens=max_tokens, flash_attn=cfg.embedding.flash_attn
    )
    # Every process of this side runs at the migrators' niceness (Ray's worker niceness), so that neither side
    # gets more of a shared machine's CPU than the other.
    prefix = _nice_prefix(nice)
    env = {**os.environ, "VECSHIFT_DSN": dsn_peer, "NO_COLOR": "1", "TERM": "dumb", "PYTHONUNBUFFERED": "1"}
    load_vs0 = os.getloadavg()
    with _llama_server([*prefix, *server], url, work / "logs" / "llama_server.log") as server_start_s:
        load_vs1 = os.getloadavg()
        code, events, apply_s = _run_json_lines(
            [*prefix, cli, "--no-env-file", "apply", str(job_file), "--yes", "--json"],
            env=env,
            cwd=work,
            log_path=work / "logs" / "apply",
            timeout=APPLY_TIMEOUT_S,
        )
        load_vs2 = os.getloadavg()
    applied = summarize_apply(events)
    if code != 0 or applied["status"] != "complete":
        err = (work / "logs" / "apply.stderr").read_text(errors="replace").strip().splitlines()
        raise SwarmError(
            f"vecshift apply exited with {code}, status {applied['status']}, {applied['rows_written']}/{n} rows: "
            f"{applied['message'] or (err[-1] if err else 'no message')}"
        )
    peer_check = _check_table(dsn_peer, "documents", TARGET_COLUMN, n)

    # -- the figure ----------------------------------------------------------------------------------------------
    swarm_rps, peer_rps = n / swarm_s, n / apply_s
    cold = ratio(apply_s + server_start_s, swarm_s + swarm_start_s)
    over = sum(1 for x in tokens if x > max_tokens)
    per_migrator = sorted((int(i["rows"]) for i in infos), reverse=True)
    peer_version = version("vecshift")

    def loads(*xs: Sequence[float]) -> str:
        return " → ".join(f"{x[0]:.1f}" for x in xs)

    notes = (
        f"{n} demo rows ({sum(tokens):,} tokens, {over} over {max_tokens} cut by both), MiniLM Q8_0, {threads} "
        f"llama.cpp threads each: swarm {migrators} migrators × {threads_each} (rows {per_migrator}, shard_rows "
        f"{cfg.swarm.shard_rows}), vecshift {peer_version} through llama_cpp.server (n_threads = n_threads_batch "
        f"= {threads}, n_ctx = n_batch = n_ubatch = {max_tokens}, flash_attn {cfg.embedding.flash_attn}, "
        f"{REQUEST_TEXTS} texts a request, 4 in flight), both at nice {nice}; fresh copies of one table, "
        f"{cfg.swarm.index} index on each; times with the model loaded: swarm orchestrate → finished_at "
        f"{swarm_s:.1f} s (backfill {run.phases.get('backfill', 0):.1f} s, index {run.phases.get('index', 0):.1f} "
        f"s), vecshift apply {apply_s:.1f} s (backfill {applied['backfill_s'] or 0:.1f} s, index "
        f"{applied['index_s'] or 0:.1f} s); model start (not counted) swarm init + spawn {swarm_start_s:.1f} s, "
        f"server {server_start_s:.1f} s; counting it on both sides the ratio is {cold or 0:.2f}; load swarm "
        f"{loads(load_sw0, load_sw1, load_sw2)}, vecshift {loads(load_vs0, load_vs1, load_vs2)}"
    )
    return [
        Result(
            FIGURE,
            swarm_rps,
            "rows/s",
            Target(">=", 1.5, "ratio"),
            baseline=peer_rps,
            baseline_label=f"vecshift {peer_version} rows/s",
            ratio=ratio(swarm_rps, peer_rps),
            ratio_label="swarm / vecshift rows/s (= vecshift wall / swarm wall)",
            notes=notes,
            details={
                "rows": n,
                "tokens": sum(tokens),
                "rows_over_max_tokens": over,
                "max_tokens": max_tokens,
                "threads": threads,
                "niceness": nice,
                "swarm": {
                    "seconds": round(swarm_s, 2),
                    "rows_per_s": round(swarm_rps, 3),
                    "start_seconds": round(swarm_start_s, 2),
                    "orchestrate_wall_seconds": round(run.wall_s, 2),
                    "phases": run.phases,
                    "migrators": migrators,
                    "threads_per_migrator": threads_each,
                    "batch_size": cfg.embedding.batch_size,
                    "shard_rows": cfg.swarm.shard_rows,
                    "index": cfg.swarm.index,
                    "hnsw": [cfg.swarm.hnsw_m, cfg.swarm.hnsw_ef_construction],
                    "migrator_infos": infos,
                    "check": swarm_check,
                    "load": {"before_start": load_sw0, "before": load_sw1, "after": load_sw2},
                },
                "vecshift": {
                    "version": peer_version,
                    "seconds": round(apply_s, 2),
                    "rows_per_s": round(peer_rps, 3),
                    "server_start_seconds": round(server_start_s, 2),
                    "server_command": server,
                    "request_texts": REQUEST_TEXTS,
                    "job": json.loads(job_file.read_text()),
                    "apply": applied,
                    "events": events,
                    "check": peer_check,
                    "load": {"before_start": load_vs0, "before": load_vs1, "after": load_vs2},
                },
                "ratio_counting_model_start": cold,
            },
        )
    ]


def _vecshift_cli() -> str:
    """The ``vecshift`` script next to this Python (else on PATH), with the server extra importable."""
    import importlib.util

    beside = Path(sys.executable).with_name("vecshift")
    cli = str(beside) if beside.exists() else shutil.which("vecshift")
    missing = [
        m for m in ("fastapi", "uvicorn", "sse_starlette", "starlette_context") if not importlib.util.find_spec(m)
    ]
    if cli is None or missing:
        what = "the vecshift CLI" if cli is None else f"llama-cpp-python's server extra ({', '.join(missing)})"
        raise SwarmError(f"the baseline needs the bench extra ({what} missing): pip install -e '.[bench]'")
    return cli


def _max_tokens(cfg: Config, model: Path) -> int:
    """The swarm's per-text token limit: ``embedding.max_tokens``, capped by the model's context."""
    from model.gguf_info import read_info

    trained = read_info(model).context_length
    return min(cfg.embedding.max_tokens, trained) if trained else cfg.embedding.max_tokens


def _nice_prefix(nice: int) -> list[str]:
    """``nice -n K`` raising a child to niceness ``nice`` from ours (nothing when it would not raise it)."""
    step = nice - os.getpriority(os.PRIO_PROCESS, 0)
    tool = shutil.which("nice")
    return [tool, "-n", str(step)] if step > 0 and tool else []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _llama_server(cmd: list[str], url: str, log_path: Path) -> Iterator[float]:
    """Run ``cmd`` (llama_cpp.server) in its own session until the block ends; yields the seconds from its
    start to the first answer of ``/v1/models`` (the model is loaded by then)."""
    with open(log_path, "wb") as out:
        t = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        try:
            deadline = time.monotonic() + SERVER_START_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
                    raise SwarmError(f"llama_cpp.server exited with {proc.returncode}: {' / '.join(tail)}")
                with contextlib.suppress(OSError):
                    with urllib.request.urlopen(url + "/models", timeout=2) as r:
                        if r.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise SwarmError(f"llama_cpp.server did not answer within {SERVER_START_TIMEOUT_S:.0f} s")
                time.sleep(0.05)
            started = time.perf_counter() - t
            log.info("bench.vecshift.server", url=url, start_s=round(started, 2), pid=proc.pid)
            yield started
        finally:
            _stop_group(proc, SERVER_STOP_GRACE_S)


def _stop_group(proc: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM the process group ``proc`` leads (its own session), SIGKILL after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _run_json_lines(
    cmd: list[str], *, env: dict[str, str], cwd: Path, log_path: Path, timeout: float
) -> tuple[int, list[dict[str, Any]], float]:
    """Run a vecshift ``--json`` command in its own session; returns (exit code, its events, seconds from the
    call to its exit). stdout goes to ``<log_path>.jsonl`` with arrival stamps, stderr to ``.stderr``; past
    ``timeout`` its process group is killed."""
    lines: list[tuple[float, str]] = []
    with open(log_path.with_suffix(".stderr"), "wb") as err, open(log_path.with_suffix(".jsonl"), "w") as out:
        t = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,
        )
        timer = threading.Timer(timeout, _stop_group, args=(proc, 5.0))
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                now = time.perf_counter() - t
                lines.append((now, line))
                out.write(f"{now:.3f} {line}")
                out.flush()
            code = proc.wait()
            seconds = time.perf_counter() - t
        finally:
            timer.cancel()
            _stop_group(proc, 5.0)
    if seconds >= timeout:
        raise SwarmError(f"vecshift did not finish within {timeout:.0f} s; see {log_path.with_suffix('.jsonl')}")
    return code, parse_events(lines), seconds


def _check_table(dsn: str, table: str, column: str, rows: int) -> dict[str, Any]:
    """Every row of ``table`` has a ``DIM``-wide vector in ``column``, and a valid index covers the column;
    else :class:`SwarmError` (a figure with missing rows is an error, not a result)."""
    from psycopg import sql

    from swarm.store.db import connect

    t, c = sql.Identifier(table), sql.Identifier(column)
    with connect(dsn) as conn:
        count = conn.execute(
            sql.SQL(
                "SELECT count(*), count(*) FILTER (WHERE {c} IS NOT NULL AND vector_dims({c}) = {d}) FROM {t}"
            ).format(c=c, t=t, d=sql.Literal(DIM))
        ).fetchone()
        indexes = conn.execute(
            "SELECT i.indexrelid::regclass::text, am.amname, i.indisvalid FROM pg_index i "
            "JOIN pg_class r ON r.oid = i.indexrelid JOIN pg_am am ON am.oid = r.relam "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indrelid = %s::regclass AND a.attname = %s",
            [table, column],
        ).fetchall()
    total, filled = (int(x) for x in count) if count else (0, 0)
    valid = [name for name, _, ok in indexes if ok]
    if total != rows or filled != rows or not valid:
        raise SwarmError(
            f"{table}.{column}: {filled} of {total} rows have a {DIM}-dim vector ({rows} expected), valid indexes "
            f"{valid or 'none'}"
        )
    return {"rows": total, "with_vector": filled, "indexes": [list(i) for i in indexes]}
