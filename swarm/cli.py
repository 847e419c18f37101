"""The command line: parses arguments and dispatches to :mod:`swarm.commands`. Nothing else lives here."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from swarm.errors import SwarmError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m swarm",
        description="Migrate the embeddings of a live PostgreSQL/pgvector table to a GGUF model with a Ray swarm.",
    )
    p.add_argument("-c", "--config", help="TOML config (default: configs/demo.toml)")
    p.add_argument("-v", "--verbose", action="store_true", help="log info events to stderr")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help.replace("%%", "%"))
        sp.add_argument("-c", "--config", default=argparse.SUPPRESS, help="TOML config")
        return sp

    sp = cmd("init", "connect to or start Ray, create the coordinator and the bookkeeping tables")
    sp.add_argument("--topology", default="hierarchical", help="swarm topology (supported: hierarchical)")
    sp.add_argument("--address", help="Ray address (default: RAY_ADDRESS or a local head node)")

    sp = cmd("spawn", "add named, detached agents to the swarm")
    sp.add_argument(
        "--type", required=True, dest="kind", choices=["migration-coordinator", "data-migrator", "validator"]
    )
    sp.add_argument("--count", type=int, default=1)

    sp = cmd("orchestrate", "run a migration to its end (init and spawn first if no swarm exists)")
    sp.add_argument("name", nargs="?", default="Migrate embeddings to Nomic")
    sp.add_argument("--detach", action="store_true", help="return once the migration has started")
    sp.add_argument("--rehearse", action="store_true", help="real swarm and writes, stand-in model, scratch column")
    sp.add_argument("--no-progress", action="store_true", help="plain log lines instead of the live display")

    sp = cmd("status", "show the current migration")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--watch", action="store_true")

    cmd("shutdown", "stop the swarm's actors (and the local Ray head if init started it)")

    sp = cmd("rollback", "set the rollout to 0%%, stop the migrators, drop the new column")
    sp.add_argument("--reason", default="manual rollback")
    sp.add_argument("--keep-data", action="store_true", help="keep the new column and its index")

    db = cmd("db", "the embedded PostgreSQL")
    dbs = db.add_subparsers(dest="db_command", required=True)
    dbs.add_parser("url", help="print the connection URL")
    dbs.add_parser("stop", help="stop the embedded server")
    dbs.add_parser("start", help="start the embedded server")

    m = cmd("model", "GGUF models: prepare, inspect, embed, pull")
    ms = m.add_subparsers(dest="model_command", required=True)
    mp = ms.add_parser("prepare", help="convert all-MiniLM-L6-v2 from its wheel to f16 and Q8_0 GGUF")
    mp.add_argument("--to", default="model", help="directory (default: model/)")
    mi = ms.add_parser("inspect", help="what a GGUF file is, read from the file")
    mi.add_argument("path")
    mi.add_argument("--json", action="store_true")
    me = ms.add_parser("embed", help="embed stdin, one text per line, print one JSON vector per line")
    me.add_argument("--model", required=True)
    me.add_argument("--query", action="store_true", help="embed as queries (query prefix)")
    me.add_argument("--jsonl", action="store_true", help='read {"text": ...} objects, one per line')
    me.add_argument("--prefix", default=None, help="override the prefix")
    mu = ms.add_parser("pull", help="download a GGUF with resume and checksum check")
    mu.add_argument("url")
    mu.add_argument("--sha256", required=True)
    mu.add_argument("--to", default="model")

    from swarm import cli_quality

    cli_quality.add_parsers(sub)

    b = cmd("bench", "run the performance figures against their baselines; writes bench/results.json and .md")
    b.add_argument("--only", default=None, help="comma-separated figure names to run")
    b.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")

    d = cmd("demo", "the demo corpus")
    ds = d.add_subparsers(dest="demo_command", required=True)
    sd = ds.add_parser("seed", help="build the documents table from real standard-library code")
    sd.add_argument("--limit", type=int, default=None, help="at most this many documents (tests)")
    sd.add_argument("--queries", type=int, default=600)
    sd.add_argument("--force", action="store_true", help="rebuild even if the table exists")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from swarm import commands, log

    log.configure("info" if args.verbose else os.environ.get("SWARM_LOG_LEVEL", "warning"))
    try:
        return commands.dispatch(args)
    except SwarmError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
