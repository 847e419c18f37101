"""The command line's parser: one table of commands, each with its arguments and its handler.

Parsing only: each handler (:mod:`swarm.cli.handlers`) calls one function of :mod:`swarm.commands`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from swarm.cli import handlers as h


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    args: Callable[[argparse.ArgumentParser], None]
    run: Callable[..., int]
    needs_config: bool = True


def _none(p: argparse.ArgumentParser) -> None:
    pass


def _init(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topology", default="hierarchical", help="swarm topology (supported: hierarchical)")
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS or a local head node)")


def _spawn(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--type", required=True, dest="kind", choices=["migration-coordinator", "data-migrator", "validator"]
    )
    p.add_argument("--count", type=int, default=1)


def _orchestrate(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", default="Migrate embeddings to Nomic")
    p.add_argument("--detach", action="store_true", help="return once the migration has started")
    p.add_argument("--rehearse", action="store_true", help="real swarm and writes, stand-in model, scratch column")
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of the live display")


def _status(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")
    p.add_argument("--watch", action="store_true")


def _rollback(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", default="manual rollback")
    p.add_argument("--keep-data", action="store_true", help="keep the new column and its index")


def _db(p: argparse.ArgumentParser) -> None:
    s = p.add_subparsers(dest="db_command", required=True)
    s.add_parser("url", help="print the connection URL")
    s.add_parser("stop", help="stop the embedded server")
    s.add_parser("start", help="start the embedded server")


def _model(p: argparse.ArgumentParser) -> None:
    s = p.add_subparsers(dest="model_command", required=True)
    mp = s.add_parser("prepare", help="convert all-MiniLM-L6-v2 from its wheel to f16 and Q8_0 GGUF")
    mp.add_argument("--to", default="model", help="directory (default: model/)")
    mi = s.add_parser("inspect", help="what a GGUF file is, read from the file")
    mi.add_argument("path")
    mi.add_argument("--json", action="store_true")
    me = s.add_parser("embed", help="embed stdin, one text per line, print one JSON vector per line")
    me.add_argument("--model", required=True)
    me.add_argument("--query", action="store_true", help="embed as queries (query prefix)")
    me.add_argument("--jsonl", action="store_true", help='read {"text": ...} objects, one per line')
    me.add_argument("--prefix", default=None, help="override the prefix")
    mu = s.add_parser("pull", help="download a GGUF with resume and checksum check")
    mu.add_argument("url")
    mu.add_argument("--sha256", required=True)
    mu.add_argument("--to", default="model")


def _demo(p: argparse.ArgumentParser) -> None:
    s = p.add_subparsers(dest="demo_command", required=True)
    sd = s.add_parser("seed", help="build the documents table from real standard-library code")
    sd.add_argument("--limit", type=int, default=None, help="at most this many documents (tests)")
    sd.add_argument("--queries", type=int, default=600)
    sd.add_argument("--force", action="store_true", help="rebuild even if the table exists")


def _assess(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sample-rows", type=int, default=256, help="real rows embedded to measure throughput")
    p.add_argument("--json", action="store_true", help="print the assessment as JSON")


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")


def _rollout(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--percent", type=float, help="share of queries for the new column, 0..100")
    g.add_argument("--auto", action="store_true", help="step through [rollout].steps; roll back on failure")
    g.add_argument(
        "--use-new",
        choices=["true", "false"],
        help="the kill switch in the database: false sends every query (routers and swarm.arm) to legacy",
    )


def _search(p: argparse.ArgumentParser) -> None:
    p.add_argument("query")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--caller", default=None, help="caller key: the same key always gets the same arm")
    p.add_argument(
        "--where", action="append", default=[], metavar="COLUMN=VALUE", help="only rows where COLUMN = VALUE"
    )
    p.add_argument("--column", action="append", default=[], metavar="COLUMN", help="also show this column")
    p.add_argument("--json", action="store_true")


def _serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--token", default=None, help="bearer token required on every request (default: $SWARM_SERVE_TOKEN)")


def _decommission(p: argparse.ArgumentParser) -> None:
    p.add_argument("--archive", metavar="FILE", help="also write the legacy embeddings to FILE (JSONL, .gz ok)")
    p.add_argument(
        "--rename",
        action="store_true",
        help="give the new column the legacy column's name (the app's SQL keeps working)",
    )
    p.add_argument(
        "--stop-following",
        action="store_true",
        help="remove the sync trigger too: from then on the application writes the new column itself",
    )


#: Every command, in the order ``--help`` lists them.
COMMANDS: list[Command] = [
    Command("init", "connect to or start Ray, create the coordinator and the bookkeeping tables", _init, h.init),
    Command("spawn", "add named, detached agents to the swarm", _spawn, h.spawn),
    Command(
        "orchestrate",
        "run a migration to its end (init and spawn first if no swarm exists)",
        _orchestrate,
        h.orchestrate,
    ),
    Command("status", "show the current migration", _status, h.status),
    Command("shutdown", "stop the swarm's actors (and the local Ray head if init started it)", _none, h.shutdown),
    Command("rollback", "set the rollout to 0%%, stop the migrators, drop the new column", _rollback, h.rollback),
    Command("db", "the embedded PostgreSQL", _db, h.db),
    Command("model", "GGUF models: prepare, inspect, embed, pull", _model, h.model, needs_config=False),
    Command("assess", "measure the table, the legacy search and the new model; changes nothing", _assess, h.assess),
    Command(
        "validate", "compare legacy and new search results on the query set and check the gates", _json, h.validate
    ),
    Command(
        "rollout",
        "set the share of queries served by the new column, or step through [rollout].steps",
        _rollout,
        h.rollout,
    ),
    Command(
        "search", "search the table through the router (legacy or new column by the rollout share)", _search, h.search
    ),
    Command("serve", "HTTP search endpoint: POST /search, GET /health, GET /metrics", _serve, h.serve),
    Command(
        "decommission",
        "after a full rollout: archive the legacy embeddings and drop the legacy column",
        _decommission,
        h.decommission,
    ),
    Command("report", "write the report of the latest migration under reports/", _none, h.report),
    Command("demo", "the demo corpus", _demo, h.demo),
]

BY_NAME: dict[str, Command] = {c.name: c for c in COMMANDS}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m swarm",
        description="Migrate the embeddings of a live PostgreSQL/pgvector table to a GGUF model with a Ray swarm.",
    )
    p.add_argument("-c", "--config", help="TOML config (default: configs/demo.toml)")
    p.add_argument("-v", "--verbose", action="store_true", help="log info events to stderr")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for c in COMMANDS:
        sp = sub.add_parser(c.name, help=c.help, description=c.help.replace("%%", "%"))
        sp.add_argument("-c", "--config", default=argparse.SUPPRESS, help="TOML config")
        c.args(sp)
    return p


def run(args: Any) -> int:
    """Dispatch parsed arguments to their handler (with the config loaded, for the commands that need one)."""
    from swarm.core.config import load_config

    c = BY_NAME[args.command]
    if not c.needs_config:
        return c.run(args)
    return c.run(args, load_config(getattr(args, "config", None)))
