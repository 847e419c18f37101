"""The quality and rollout commands: ``assess``, ``validate``, ``rollout``, ``search``, ``serve``,
``decommission``, ``report``. Parsing and dispatch only; the work is in the modules they name."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from swarm.config import Config
from swarm.errors import EXIT_FAILED, EXIT_OK, UsageError

COMMANDS = ("assess", "validate", "rollout", "search", "serve", "decommission", "report")


def _out(text: str = "") -> None:
    print(text, flush=True)


def add_parsers(subparsers: Any) -> None:
    """Add this module's subcommands to the CLI's ``add_subparsers()`` object."""

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        sp = subparsers.add_parser(name, help=help, description=help)
        sp.add_argument("-c", "--config", default=argparse.SUPPRESS, help="TOML config")
        return sp

    sp = cmd("assess", "measure the table, the legacy search and the new model; changes nothing")
    sp.add_argument("--sample-rows", type=int, default=256, help="real rows embedded to measure throughput")
    sp.add_argument("--json", action="store_true", help="print the assessment as JSON")

    sp = cmd("validate", "compare legacy and new search results on the query set and check the gates")
    sp.add_argument("--json", action="store_true")

    sp = cmd("rollout", "set the share of queries served by the new column, or step through [rollout].steps")
    g = sp.add_mutually_exclusive_group(required=True)
    g.add_argument("--percent", type=float, help="share of queries for the new column, 0..100")
    g.add_argument("--auto", action="store_true", help="step through [rollout].steps; roll back on failure")

    sp = cmd("search", "search the table through the router (legacy or new column by the rollout share)")
    sp.add_argument("query")
    sp.add_argument("-k", type=int, default=10)
    sp.add_argument("--caller", default=None, help="caller key: the same key always gets the same arm")
    sp.add_argument("--json", action="store_true")

    sp = cmd("serve", "HTTP search endpoint: POST /search, GET /health (JSON)")
    sp.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=8765)

    sp = cmd("decommission", "after a full rollout: archive the legacy embeddings and drop the legacy column")
    sp.add_argument("--archive", metavar="FILE", help="also write the legacy embeddings to FILE (JSONL, .gz ok)")

    cmd("report", "write the report of the latest migration under reports/")


def dispatch(args: argparse.Namespace, cfg: Config) -> int | None:
    """Run one of this module's commands; None when ``args.command`` is not one of them."""
    cmd = args.command
    if cmd not in COMMANDS:
        return None
    from swarm.db import resolve_dsn

    dsn = resolve_dsn(cfg)
    if cmd == "assess":
        from swarm import assess

        a = assess.assess(
            cfg,
            sample_rows=args.sample_rows,
            progress=(lambda msg: print(f"… {msg}", file=sys.stderr)) if sys.stderr.isatty() else None,
        )
        _out(json.dumps(a, indent=2, default=str) if args.json else assess.render(a))
        if not args.json:
            _out(f"\nwritten: {a['reports']['markdown']}, {a['reports']['json']}")
        return EXIT_OK
    if cmd == "validate":
        from agents.validator import Validator
        from swarm.db import Database
        from swarm.rollout import current_migration

        db = Database(dsn)
        m = current_migration(db, cfg)
        validation = Validator("validator-cli", cfg.to_payload(dsn)).validate(m.id)
        if args.json:
            _out(json.dumps(validation, indent=2, default=str))
        else:
            _out(_render_validation(validation))
        return EXIT_FAILED if validation["failures"] else EXIT_OK
    if cmd == "rollout":
        from swarm import rollout
        from swarm.db import Database

        if args.auto:
            code, result = rollout.run_auto(cfg, dsn, out=_out)
            if result.get("skipped"):
                _out(result["skipped"])
            elif result["failures"]:
                rb = result.get("rollback", {})
                _out(f"rolled back migration {rb.get('migration')}: {'; '.join(result['failures'])}")
            else:
                _out(f"rolled out: {result['percent']:g}% of queries on the new column")
            return code
        db = Database(dsn)
        m = rollout.current_migration(db, cfg)
        prev = rollout.set_percent(db, m, args.percent, reason="manual")
        _out(
            f"migration {m.id}: {prev:g}% -> {args.percent:g}% of queries on the new column"
            + ("" if cfg.rollout.use_new else " (USE_NOMIC_EMBEDDINGS=false: every query still goes to legacy)")
        )
        return EXIT_OK
    if cmd == "search":
        from swarm.router import Router

        router = Router(cfg, dsn, source="search")
        try:
            r = router.search(args.query, k=args.k, caller=args.caller)
        finally:
            router.close()
        if args.json:
            _out(json.dumps(r.as_dict(), indent=2))
        else:
            _out(f"{r.arm} column ({r.percent:g}% rollout{', fallback' if r.fallback else ''}), {r.latency_ms:.1f} ms")
            for rank, (key, dist) in enumerate(zip(r.ids, r.distances, strict=True), 1):
                _out(f"{rank:>3}. id {key}  distance {dist:.4f}")
        return EXIT_OK
    if cmd == "serve":
        from swarm import serve

        if args.port < 0 or args.port > 65535:
            raise UsageError(f"--port {args.port}: must be 0..65535")
        serve.serve(cfg, dsn, host=args.host, port=args.port, out=_out)
        return EXIT_OK
    if cmd == "decommission":
        from swarm import decommission

        d = decommission.decommission(cfg, dsn, archive=args.archive)
        _out(
            f"decommissioned migration {d['migration']}: dropped {d['table']}.{d['dropped_column']} "
            f"(indexes: {', '.join(d['dropped_indexes']) or 'none'}); "
            f"{d['archived_rows']} legacy embeddings in "
            f"{d['archive_table']}" + (f" and {d['archive_file']}" if d.get("archive_file") else "")
        )
        if d.get("report"):
            _out(f"report: {d['report']['markdown']}")
        return EXIT_OK
    if cmd == "report":
        from swarm import report
        from swarm.db import Database
        from swarm.rollout import current_migration

        db = Database(dsn)
        paths = report.write(cfg, db, current_migration(db, cfg).id)
        _out("written: " + ", ".join(paths.values()))
        return EXIT_OK
    return None


def _render_validation(r: dict[str, Any]) -> str:
    if not r.get("legacy"):
        return "validation FAILED: " + "; ".join(r["failures"])
    lg, nw = r["legacy"], r["new"]

    def f(v: Any, d: int = 3) -> str:
        return "-" if v is None else f"{v:.{d}f}"

    lines = [
        f"validation of migration {r['migration']}: {r['queries']} queries ({r['labelled']} labelled), "
        f"k = {r['k']}" + (" (partial: backfill running)" if r.get("partial") else ""),
        f"{'':<18}{'legacy':>10}{'new':>10}",
        f"{'MRR@10':<18}{f(lg['mrr_at_10']):>10}{f(nw['mrr_at_10']):>10}",
        f"{'nDCG@10':<18}{f(lg['ndcg_at_10']):>10}{f(nw['ndcg_at_10']):>10}",
        f"{'recall@' + str(r['k']):<18}{f(lg['recall_at_k']):>10}{f(nw['recall_at_k']):>10}",
        f"{'search p50 (ms)':<18}{f(lg['search_p50_ms'], 2):>10}{f(nw['search_p50_ms'], 2):>10}",
        f"{'search p95 (ms)':<18}{f(lg['search_p95_ms'], 2):>10}{f(nw['search_p95_ms'], 2):>10}",
        f"{'errors':<18}{lg['errors']:>10}{nw['errors']:>10}",
        f"overlap@{r['k']}: {f(r['overlap_at_k'])}",
    ]
    lines += [f"FAILED: {x}" for x in r["failures"]] or ["all gates passed"]
    return "\n".join(lines)
