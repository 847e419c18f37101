"""Safe defaults: the DSN password never shows, the dashboard and ``serve`` listen on 127.0.0.1, ``.swarm/`` is
its owner's, and ``swarm.max_rows_per_second`` bounds the write rate (measured from committed writes).

(Identifiers quoted with ``psycopg.sql``: ``test_identifiers.py``. The password in the Ray dashboard and Ray's
logs: checked at the end of every Ray scenario, ``test_ray_*.py``.)
"""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from swarm import commands
from swarm.core.config import load_config
from tests.faults.conftest import _dsn_with_password
from tests.faults.harness import cli, create_docs, db_texts, find_secret, toml_for, vector_writes
from tests.fix_db import REPO
from tests.support.runner import run_in_process


def _non_loopback_ip() -> str | None:
    """An address of this machine that is not loopback (where a listener on 0.0.0.0 would answer)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------------------------
# The password
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.chaos
def test_password_never_shown(
    dsn: str, conn: psycopg.Connection, tmp_path: Path, minilm_q8: Path, safeguard: Any
) -> None:
    """A migration run with a password in its DSN: the password is in none of what the user or anyone else sees
    (stdout/stderr, JSON log file, status text and JSON, report files, bookkeeping tables, actor payload repr,
    connection errors)."""
    from agents.actors import Sealed
    from swarm.core.config import load_config
    from swarm.ops.report import write as write_report
    from swarm.store.db import Database

    secret_dsn, secret = _dsn_with_password(dsn, "Pw-" + os.urandom(6).hex())
    create_docs(conn, "pw_docs", 12, seed=11, extra=[(99, None)])
    sections: dict[str, dict[str, Any]] = {
        "database": {"dsn": secret_dsn, "table": "pw_docs"},
        "embedding": {"model_path": str(REPO / "model/all-MiniLM-L6-v2.Q8_0.gguf"), "batch_size": 8},
        "legacy": {"model_path": str(REPO / "model/all-MiniLM-L6-v2.f16.gguf")},
        "swarm": {"validators": 0, "shard_rows": 6, "ray_address": "127.0.0.1:9"},
    }
    (tmp_path / "configs").mkdir()
    toml = tmp_path / "configs" / "pw.toml"
    toml.write_text(toml_for(sections))
    cfg = load_config(toml)
    log_file = tmp_path / "swarm.jsonl"
    os.environ["SWARM_LOG_FILE"] = str(log_file)
    try:
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            from swarm.core import log as swarm_log

            swarm_log._configured = None
            run = run_in_process(cfg, secret_dsn)
            m, result, workers = run.migration, run.result, run.workers
        migration_output = buf.getvalue()
    finally:
        os.environ.pop("SWARM_LOG_FILE", None)
    assert result["state"] == "completed", result
    texts: dict[str, str] = {"migration stdout/stderr": migration_output}
    for args in (["status"], ["status", "--json"], ["db", "url"], ["-v", "status"]):
        code, so, se = cli(["-c", str(toml), *args], cwd=tmp_path, env={"SWARM_LOG_FILE": str(log_file)})
        texts[f"`swarm {' '.join(args)}` (exit {code})"] = so + se
    # A connection that fails (every command connects through swarm.db.connect; the CLI would retry for ~15 s
    # first, in case the server is restarting): the error names the server, not the password.
    from swarm.core.errors import DatabaseError
    from swarm.store.db import connect

    with pytest.raises(DatabaseError) as failed:
        connect(f"postgresql://app:{secret}@127.0.0.1:1/nowhere")
    texts["connection error"] = str(failed.value)
    assert "127.0.0.1" in str(failed.value)
    reports = write_report(cfg, Database(secret_dsn), m.id, out_dir=tmp_path / "reports")
    texts["payload repr"] = repr(Sealed(cfg.to_payload(secret_dsn))) + str(Sealed(cfg.to_payload(secret_dsn)))
    texts["config repr"] = repr(cfg) + str(cfg.public_dict())
    texts.update(db_texts(conn))
    texts.update({f"migrator info {n}": str(w.info()) for n, w in workers.items()})
    files = [log_file, *(Path(p) for p in reports.values())]
    leaks = find_secret(secret, files=files, texts=texts)
    g = safeguard(
        "DSN password never shown",
        f"{len(texts)} outputs (CLI status/json/db url/-v, connection error, bookkeeping tables, payload "
        f"repr) and {len(files)} files (JSON log, report md/json/charts): "
        + (f"password in {leaks}" if leaks else "password in none"),
    )
    g.passed = not leaks and log_file.exists()
    assert log_file.exists(), "the JSON log file was not written"
    assert not leaks, leaks


# ---------------------------------------------------------------------------------------------------------------
# Listening addresses
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.chaos
def test_dashboard_listens_on_loopback_only(ray_head: dict[str, Any], safeguard: Any) -> None:
    import psutil

    port = int(ray_head["dashboard"].rsplit(":", 1)[1])
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    dash = sorted({c.laddr.ip for c in listening if c.laddr.port == port})
    ip = _non_loopback_ip()
    reachable = bool(ip) and _answers(ip, port)
    # Every other socket the head's processes listen on, for the record (Ray's own servers: not swarm's to bind).
    heads = {
        p.pid: _role(p.info["cmdline"] or [], ray_head)
        for p in psutil.process_iter(["cmdline"])
        if any(ray_head["temp_dir"] in part for part in (p.info["cmdline"] or []))
    }
    gcs_port = int(ray_head["address"].rsplit(":", 1)[1])
    others = sorted(
        {
            f"{'gcs' if c.laddr.port == gcs_port else heads[c.pid]} [{c.laddr.ip}]:{c.laddr.port}"
            for c in listening
            if c.pid in heads
            and c.laddr.port != port
            and not c.laddr.ip.startswith("127.")
            and ip
            and _answers(ip, c.laddr.port)
        }
    )
    g = safeguard(
        "Ray dashboard on 127.0.0.1",
        f"dashboard :{port} listens on {', '.join(dash) or '?'}; from {ip}: "
        f"{'ANSWERS' if reachable else 'refused'}. Not the dashboard, for the record: other head sockets "
        f"that answer from {ip}: {', '.join(others) or 'none'}",
    )
    g.passed = dash == ["127.0.0.1"] and not reachable
    assert dash == ["127.0.0.1"], dash
    assert not reachable


def _role(cmdline: list[str], head: dict[str, Any]) -> str:
    for part in cmdline:
        name = part.rsplit("/", 1)[-1]
        if name in ("gcs_server", "raylet", "dashboard.py", "agent.py", "monitor.py", "log_monitor.py"):
            return name.removesuffix(".py")
        if "runtime_env" in part:
            return "runtime_env_agent"
        if part == "ray.util.client.server":
            return "client_server"
    return "ray"


@pytest.mark.chaos
def test_serve_listens_on_loopback_by_default(make_config: Any, dsn: str, safeguard: Any) -> None:
    from swarm.cli.parser import build_parser
    from swarm.serving.http import make_server

    default_host = build_parser().parse_args(["serve"]).host
    server = make_server(make_config(), dsn, port=0)
    try:
        host, port = server.server_address[:2]
        ip = _non_loopback_ip()
        threading.Thread(target=server.serve_forever, daemon=True).start()
        local, remote = _answers("127.0.0.1", port), bool(ip) and _answers(ip, port)
    finally:
        server.shutdown()
        server.close()
    g = safeguard(
        "swarm serve on 127.0.0.1",
        f"`serve --host` defaults to {default_host}; server bound to {host}:{port}; answers on "
        f"127.0.0.1: {local}, on {ip}: {remote}",
    )
    g.passed = default_host == "127.0.0.1" and host == "127.0.0.1" and local and not remote
    assert g.passed, g.measured


# ---------------------------------------------------------------------------------------------------------------
# .swarm/
# ---------------------------------------------------------------------------------------------------------------
def _readable_by_others(state: Path) -> list[str]:
    """Entries of ``state`` another local user can open: ``state`` lets others through (x) and the entry lets
    them read or write."""
    if not stat.S_IMODE(state.stat().st_mode) & stat.S_IXOTH:
        return []
    return [
        f"{p.name} {stat.filemode(p.stat().st_mode)}"
        for p in sorted(state.iterdir())
        if p.stat().st_mode & (stat.S_IROTH | stat.S_IWOTH)
    ]


@pytest.mark.chaos
def test_state_dir_is_its_owners(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    ray_head: dict[str, Any],
    safeguard: Any,
    skip_if_external_server: None,
) -> None:
    """``db url`` on the embedded default creates ``.swarm/`` (and the server's data in it), ``init`` starts a Ray
    head and records it there (the session's head was started that way): no one else may list ``.swarm/`` or
    read what swarm writes in it."""
    (tmp_path / "configs").mkdir()
    toml = tmp_path / "configs" / "embedded.toml"
    toml.write_text(toml_for({"database": {"dsn": ""}}))
    code, so, se = cli(["-c", str(toml), "db", "url"], cwd=tmp_path)
    state = tmp_path / ".swarm"
    try:
        assert code == 0, se
        mode = stat.S_IMODE(state.stat().st_mode)
        exposed = _readable_by_others(state)
        # The state directory runtime.start_head wrote ray.json into (the ray_head fixture's).
        heads = sorted({p.parent.resolve() for p in tmp_path_factory.getbasetemp().glob("ray-state*/ray.json")})
        for head_state in heads:
            exposed += [f"{head_state.name}/{e}" for e in _readable_by_others(head_state)]
        g = safeguard(
            ".swarm/ readable by its owner only",
            f".swarm is {stat.filemode(mode | stat.S_IFDIR)} (uid {os.geteuid()}; others may pass "
            f"through for pgserver's user); files in it others can read: {', '.join(exposed) or 'none'}",
        )
        g.passed = mode & 0o066 == 0 and not exposed
        assert mode & 0o066 == 0, oct(mode)  # group and others: no read, no write
        assert not exposed, exposed
    finally:
        commands.db_stop(load_config(toml))


# ---------------------------------------------------------------------------------------------------------------
# swarm.max_rows_per_second
# ---------------------------------------------------------------------------------------------------------------
LIMIT = 8.0


def _rate(times: list[float], batch: int) -> float:
    """Rows per second between the first and the last write, not counting the first batch (it starts the
    clock)."""
    if len(times) <= batch:
        return 0.0
    return (len(times) - batch) / max(times[-1] - times[0], 1e-9)


@pytest.mark.chaos
def test_max_rows_per_second_limits_the_write_rate(
    make_config: Any, dsn: str, conn: psycopg.Connection, safeguard: Any, minilm_q8: Path
) -> None:
    """The limit covers every write the swarm makes to the table: the backfill, and the re-embedding of rows the
    application changed (drained from the queue), which a busy application can make as large as the table."""
    create_docs(conn, "paced", 96, seed=12)
    cfg = make_config(
        database={"table": "paced"},
        embedding={"batch_size": 4},
        swarm={"shard_rows": 32, "validators": 0, "max_rows_per_second": LIMIT},
    )

    def app(stop: threading.Event) -> None:
        # Once the first shard is done, the application rewrites its 32 rows: the drain re-embeds them.
        with psycopg.connect(dsn, autocommit=True) as c:
            while not stop.is_set():
                planned = c.execute("SELECT to_regclass('swarm.shards')").fetchone()[0] is not None
                r = c.execute("SELECT state FROM swarm.shards WHERE shard_id = 0").fetchone() if planned else None
                if r and r[0] == "done":
                    c.execute("UPDATE paced SET content = content || ' # edited' WHERE id <= 32")
                    return
                time.sleep(0.2)

    run = run_in_process(cfg, dsn, during=app)
    m, result = run.migration, run.result
    assert result["state"] == "completed", result
    backfill_end = conn.execute(
        "SELECT extract(epoch FROM max(finished_at)) FROM swarm.shards WHERE migration_id = %s", [m.id]
    ).fetchone()[0]
    writes = vector_writes(conn, "paced")
    backfill = [t for _, t in writes if t <= float(backfill_end)]
    drain = [t for _, t in writes if t > float(backfill_end)]
    capacity = conn.execute(
        "SELECT sum(rows) / nullif(sum(embed_seconds), 0) FROM swarm.batches "
        "WHERE migration_id = %s AND shard_id IS NOT NULL",
        [m.id],
    ).fetchone()[0]
    b_rate, d_rate = _rate(backfill, 4), _rate(drain, 4)
    bound = LIMIT * 1.25
    g1 = safeguard(
        "max_rows_per_second: backfill",
        f"limit {LIMIT:g} rows/s, 2 migrators: {len(backfill)} writes at {b_rate:.1f} rows/s "
        f"(one migrator embeds {float(capacity or 0):.0f} rows/s unthrottled)",
    )
    g1.passed = 0 < b_rate <= bound
    g2 = safeguard(
        "max_rows_per_second: re-embedding changed rows",
        f"limit {LIMIT:g} rows/s: {len(drain)} writes of queued changes at {d_rate:.1f} rows/s",
    )
    g2.passed = len(drain) >= 32 and d_rate <= bound
    assert g1.passed, g1.measured
    assert len(drain) >= 32, "the application's 32 edits should have been re-embedded after the backfill"
    assert g2.passed, g2.measured
