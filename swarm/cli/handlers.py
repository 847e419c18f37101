"""One handler per command: call the command function in :mod:`swarm.commands` and print what it returned.

A handler takes the parsed arguments (and the config, for commands that need one) and returns the exit code.
Nothing here decides anything about a migration; it only turns results into lines.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict

from swarm import commands
from swarm.core.config import Config, load_config
from swarm.core.errors import EXIT_FAILED, EXIT_HELD, EXIT_OK, ConfigError, UsageError
from swarm.migration.status import legacy_summary


def out(text: str = "") -> None:
    print(text, flush=True)


# -- model (no config needed) -------------------------------------------------------------------------------
def model(args: argparse.Namespace) -> int:
    sub = args.model_command
    if sub == "prepare":
        for path, what in commands.model_prepare(args.to):
            out(f"{what}: {path}")
    elif sub == "inspect":
        info = commands.model_inspect(args.path)
        if args.json:
            out(json.dumps(asdict(info), default=str, indent=2))
        else:
            from model.gguf_info import format_info

            out(format_info(info))
    elif sub == "embed":
        texts = _texts_from_stdin(args.jsonl)
        if texts:
            vecs = commands.model_embed(
                args.model, texts, query=args.query, prefix=args.prefix, cfg=_maybe_config(args)
            )
            for v in vecs:
                sys.stdout.write(json.dumps([round(float(x), 7) for x in v]) + "\n")
    elif sub == "pull":
        out(f"pulled: {commands.model_pull(args.url, args.sha256, args.to)}")
    return EXIT_OK


def _texts_from_stdin(jsonl: bool) -> list[str]:
    texts: list[str] = []
    for n, line in enumerate(sys.stdin, 1):
        line = line.rstrip("\n")
        if jsonl:
            if not line.strip():
                continue
            try:
                texts.append(json.loads(line)["text"])
            except (ValueError, KeyError, TypeError):
                raise UsageError(f'stdin line {n}: expected {{"text": ...}}, got {line[:60]!r}') from None
        else:
            texts.append(line)
    return texts


def _maybe_config(args: argparse.Namespace) -> Config | None:
    """The config for prefixes when one is given or the default exists; an explicit bad one is an error."""
    if getattr(args, "config", None):
        return load_config(args.config)
    try:
        return load_config(None)
    except ConfigError:
        return None


# -- the swarm ----------------------------------------------------------------------------------------------
def db(args: argparse.Namespace, cfg: Config) -> int:
    if args.db_command == "url":
        out(commands.db_url(cfg))
    elif args.db_command == "stop":
        out("stopped" if commands.db_stop(cfg) else "not running")
    else:
        out(commands.db_start(cfg))
    return EXIT_OK


def demo(args: argparse.Namespace, cfg: Config) -> int:
    r = commands.demo_seed(cfg, limit=args.limit, queries=args.queries, force=args.force, progress=sys.stderr.isatty())
    verb = "seeded" if r["created"] else "already seeded"
    out(
        f"{verb}: {r['table']} with {r['rows']} documents, {r['queries']} queries"
        + (f" in {r['seconds']} s" if r.get("seconds") else "")
    )
    return EXIT_OK


def init(args: argparse.Namespace, cfg: Config) -> int:
    r = commands.init(cfg, topology=args.topology, address=args.address)
    out(
        f"swarm ready: ray {r['ray_address']}, dashboard {r.get('dashboard') or '-'}, coordinator up, "
        f"pgvector {r['pgvector']}"
    )
    return EXIT_OK


def spawn(args: argparse.Namespace, cfg: Config) -> int:
    out("spawned: " + ", ".join(commands.spawn(cfg, args.kind, args.count)))
    return EXIT_OK


def orchestrate(args: argparse.Namespace, cfg: Config) -> int:
    return commands.orchestrate(
        cfg, args.name, detach=args.detach, rehearse=args.rehearse, progress=not args.no_progress, verbose=True
    )


def status(args: argparse.Namespace, cfg: Config) -> int:
    from swarm.migration.record import PAUSED, TERMINAL
    from swarm.ops.progress import render_status

    while True:
        st = commands.status(cfg)
        out(json.dumps(st, indent=2, default=str) if args.json else render_status(st))
        if not args.watch or st["state"] in (*TERMINAL, PAUSED, "none"):
            return EXIT_OK
        time.sleep(2)


def shutdown(args: argparse.Namespace, cfg: Config) -> int:
    r = commands.shutdown(cfg)
    out(f"stopped {len(r['killed'])} actors" + (", and the Ray head" if r["head_stopped"] else ""))
    return EXIT_OK


def rollback(args: argparse.Namespace, cfg: Config) -> int:
    r = commands.rollback(cfg, reason=args.reason, keep_data=args.keep_data)
    out(
        f"rolled back migration {r['migration']}: share 0% in {r['share_zero_seconds']} s, "
        f"{'new column dropped' if r['dropped_column'] else 'new column kept'}, "
        f"legacy column {legacy_summary(r)}"
    )
    return EXIT_OK if r["legacy_intact"] else EXIT_FAILED


# -- quality, serving, the end of the journey ---------------------------------------------------------------
def assess(args: argparse.Namespace, cfg: Config) -> int:
    from swarm.ops.assess import render

    progress = (lambda msg: print(f"… {msg}", file=sys.stderr)) if sys.stderr.isatty() else None
    a = commands.assess(cfg, sample_rows=args.sample_rows, progress=progress)
    out(json.dumps(a, indent=2, default=str) if args.json else render(a))
    if not args.json:
        out(f"\nwritten: {a['reports']['markdown']}, {a['reports']['json']}")
    return EXIT_OK


def validate(args: argparse.Namespace, cfg: Config) -> int:
    from swarm.ops.progress import render_validation

    v = commands.validate(cfg)
    out(json.dumps(v, indent=2, default=str) if args.json else render_validation(v))
    if v.get("verdict") == "INCONCLUSIVE":
        return EXIT_HELD
    return EXIT_FAILED if v["failures"] else EXIT_OK


def rollout(args: argparse.Namespace, cfg: Config) -> int:
    use_new = None if args.use_new is None else args.use_new == "true"
    code, r = commands.rollout(cfg, percent=args.percent, auto=args.auto, use_new=use_new, out=out)
    if use_new is not None:
        out(
            "new column "
            + ("enabled: searches follow the share" if use_new else "disabled: every search goes to legacy")
            + " (swarm.settings.use_new_embeddings)"
        )
    elif not args.auto:
        out(
            f"migration {r['migration']}: {r['previous']:g}% -> {r['percent']:g}% of queries on the new column"
            + ("" if cfg.rollout.use_new else " (USE_NOMIC_EMBEDDINGS=false: every query still goes to legacy)")
        )
    elif r.get("skipped"):
        out(r["skipped"])
    elif r["failures"]:
        out(f"rolled back migration {r.get('rollback', {}).get('migration')}: {'; '.join(r['failures'])}")
    else:
        out(f"rolled out: {r['percent']:g}% of queries on the new column")
    return code


def search(args: argparse.Namespace, cfg: Config) -> int:
    where: dict[str, str] = {}
    for item in args.where:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--where {item!r}: write COLUMN=VALUE")
        where[name] = value
    r = commands.search(cfg, args.query, k=args.k, caller=args.caller, where=where, columns=tuple(args.column))
    if args.json:
        out(json.dumps(r.as_dict(), indent=2, default=str))
        return EXIT_OK
    out(f"{r.arm} column ({r.percent:g}% rollout{', fallback' if r.fallback else ''}), {r.latency_ms:.1f} ms")
    for rank, row in enumerate(r.rows, 1):
        extra = "".join(f"  {k}={v}" for k, v in row.columns.items())
        out(f"{rank:>3}. id {row.id}  distance {row.distance:.4f}{extra}")
    return EXIT_OK


def serve(args: argparse.Namespace, cfg: Config) -> int:
    commands.serve(cfg, host=args.host, port=args.port, token=args.token, out=out)
    return EXIT_OK


def decommission(args: argparse.Namespace, cfg: Config) -> int:
    d = commands.decommission(cfg, archive=args.archive, rename=args.rename, stop_following=args.stop_following)
    out(
        f"decommissioned migration {d['migration']}: dropped {d['table']}.{d['dropped_column']} "
        f"(indexes: {', '.join(d['dropped_indexes']) or 'none'}); {d['archived_rows']} legacy embeddings in "
        f"{d['archive_table']}" + (f" and {d['archive_file']}" if d.get("archive_file") else "")
    )
    if d.get("report"):
        out(f"report: {d['report']['markdown']}")
    return EXIT_OK


def report(args: argparse.Namespace, cfg: Config) -> int:
    out("written: " + ", ".join(commands.report(cfg).values()))
    return EXIT_OK
