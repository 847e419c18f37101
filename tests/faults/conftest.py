"""The fault-injection suite's session: the figures each scenario records, the table printed at the end, and the
swarm the Ray scenarios share (a database reached through a DSN that carries a password, to catch it leaking).

The fixtures of ``tests/fix_*.py`` come from ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.faults.table import Outcome, Safeguard, render

OUTCOMES: list[Outcome] = []
SAFEGUARDS: list[Safeguard] = []
_BY_TEST: dict[str, list[Outcome | Safeguard]] = {}


@pytest.fixture()
def record(request: pytest.FixtureRequest) -> Callable[..., Outcome]:
    """``record(scenario, faults)`` adds a row to the table; the test fills in its figures."""

    def add(scenario: str, faults: str) -> Outcome:
        o = Outcome(scenario, faults)
        OUTCOMES.append(o)
        _BY_TEST.setdefault(request.node.nodeid, []).append(o)
        return o

    return add


@pytest.fixture()
def safeguard(request: pytest.FixtureRequest) -> Callable[[str, str], Safeguard]:
    """``safeguard(name, measured)`` adds a row to the safe-defaults table."""

    def add(name: str, measured: str) -> Safeguard:
        s = Safeguard(name, measured)
        SAFEGUARDS.append(s)
        _BY_TEST.setdefault(request.node.nodeid, []).append(s)
        return s

    return add


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" or (report.when == "setup" and report.failed):
        for row in _BY_TEST.get(item.nodeid, []):
            # A row keeps the verdict its test gave it (one sub-case of several); the others take the test's.
            if row.passed is None:
                row.passed = report.passed
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not OUTCOMES and not SAFEGUARDS:
        return
    terminalreporter.section("fault injection")
    for line in render(OUTCOMES, SAFEGUARDS).splitlines():
        terminalreporter.write_line(line)


# ---------------------------------------------------------------------------------------------------------------
# The Ray scenarios' swarm
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class ChaosEnv:
    """One database for the Ray scenarios (each uses its own table), reached with a password in the DSN."""

    dsn: str  # carries ``secret``
    plain_dsn: str  # the same database without the password (the test's own connections)
    admin_dsn: str
    secret: str
    root: Path
    head: dict[str, Any]
    make: Callable[..., Any]
    leak_row: Safeguard | None = None
    leak_checks: int = 0

    def check_leaks(self, conn: psycopg.Connection) -> list[str]:
        """Where the password shows in what Ray and swarm expose: the dashboard's actor and task views, Ray's
        session logs (every actor's stdout/stderr), process command lines, swarm's tables. One row of the
        safe-defaults table sums up every check of the session."""
        from tests.faults.harness import dashboard_texts, db_texts, find_secret, process_cmdlines, ray_log_files

        dash = dashboard_texts(self.head)
        actors_view = dash.get("dashboard /api/v0/actors?detail=1&limit=1000", "")
        assert "data-migrator-" in actors_view, f"the dashboard's actor list is not readable: {actors_view[:200]}"
        texts = {**dash, **process_cmdlines(), **db_texts(conn)}
        # Ray's session logs, and what orchestrate leaves in the project: its report under reports/, CLI logs.
        # (Not the config files the scenarios wrote: the DSN is the user's own, in their own file.)
        files = ray_log_files(self.head) + [p for p in self.root.rglob("*") if p.is_file() and p.suffix != ".toml"]
        leaks = find_secret(self.secret, files=files, texts=texts)
        self.leak_checks += 1
        if self.leak_row is None:
            self.leak_row = Safeguard("DSN password not shown by Ray", "")
            SAFEGUARDS.append(self.leak_row)
        seen = [] if self.leak_row.passed is not False else self.leak_row.measured.split(" in: ", 1)[-1].split("; ")
        seen = sorted(set(seen) | set(leaks))
        self.leak_row.passed = not seen
        self.leak_row.measured = (
            f"after each of {self.leak_checks} Ray scenarios: dashboard actors/tasks API, {len(files)} files (Ray "
            f"session logs, reports, orchestrate output), all process command lines, swarm tables: "
            + (f"password in: {'; '.join(seen)}" if seen else "not found")
        )
        return leaks


def _dsn_with_password(dsn: str, secret: str) -> tuple[str, str]:
    """A URL for ``dsn`` that carries a password: the server's own when it needs one, else ``secret`` (the
    embedded server trusts local connections and ignores it). Returns (url, the password in it)."""
    p = conninfo_to_dict(dsn)
    password = str(p.get("password") or secret)
    host = str(p.get("host") or "")
    netloc_host, query = ("", f"?host={quote(host, safe='/')}") if host.startswith("/") else (host, "")
    port = f":{p['port']}" if p.get("port") and netloc_host else ""
    if p.get("port") and not netloc_host:
        query += f"&port={p['port']}"
    user = quote(str(p.get("user") or "postgres"), safe="")
    return f"postgresql://{user}:{quote(password, safe='')}@{netloc_host}{port}/{p['dbname']}{query}", password


@pytest.fixture(scope="session")
def chaos_env(
    pg_server_dsn: str,
    ray_head: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
    minilm_q8: Path,
    minilm_f16: Path,
) -> Iterator[ChaosEnv]:
    from tests.fix_db import scratch_database

    with scratch_database(pg_server_dsn, "chaos") as plain:
        yield from _chaos_env(plain, pg_server_dsn, ray_head, tmp_path_factory)


def _chaos_env(
    plain: str, pg_server_dsn: str, ray_head: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChaosEnv]:
    from tests.fix_db import config_for

    dsn, secret = _dsn_with_password(plain, "Chaos-" + secrets.token_hex(8))
    root = tmp_path_factory.mktemp("chaos-root")

    def make(table: str, **sections: dict[str, Any]) -> Any:
        base: dict[str, dict[str, Any]] = {
            "database": {"table": table},
            "embedding": {"batch_size": 8},
            # The rate limit paces the backfill alike on a fast machine and a busy one, so that each fault lands
            # where its scenario says (mid-shard, mid-batch).
            "swarm": {
                "ray_address": ray_head["address"],
                "validators": 0,
                "migrators": 2,
                "threads_per_migrator": 1,
                "shard_rows": 100,
                "max_rows_per_second": 24,
            },
        }
        for k, v in sections.items():
            base.setdefault(k, {}).update(v)
        return config_for(dsn, root, **base)

    yield ChaosEnv(dsn, plain, pg_server_dsn, secret, root, ray_head, make)
    from agents import actors as agents_ray

    agents_ray.kill_all()


@pytest.fixture()
def fresh_swarm(chaos_env: ChaosEnv) -> Iterator[ChaosEnv]:
    """No swarm actors before or after the test: each scenario's agents start with its own config."""
    from agents import actors as agents_ray

    agents_ray.kill_all()
    yield chaos_env
    agents_ray.kill_all()


@pytest.fixture(scope="session")
def fresh_embedder(minilm_q8: Path) -> Iterator[Any]:
    """The new model, loaded in the test process, to embed each row's final content for the staleness check."""
    from model.embedder import LlamaEmbedder

    with LlamaEmbedder(minilm_q8, cache_size=0, n_threads=1) as e:
        yield e


@pytest.fixture()
def skip_if_external_server() -> None:
    if os.environ.get("SWARM_TEST_DSN"):
        pytest.skip("restarts the embedded server")
