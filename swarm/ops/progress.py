"""What people look at: the live terminal view of a migration, its closing summary, ``status`` as text."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import psycopg

from swarm import migration as mig
from swarm.core.errors import DatabaseError
from swarm.core.log import get_logger
from swarm.store.db import Database

log = get_logger()


def _fmt_secs(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def render_status(st: dict[str, Any]) -> str:
    """``status`` without ``--json``."""
    if st.get("migration") is None:
        return "no migration yet (run `python -m swarm orchestrate`)"
    lines = [
        f"migration {st['id']}: {st['migration']}",
        f"  state     {st['state']} ({st.get('phase') or '-'})",
        f"  table     {st['table']}.{st['column']} {st['column_type']}  model {st['model']}",
        f"  rows      {st['rows_done']}/{st['rows_total']} done, {st['rows_failed']} dead-lettered, "
        f"{st.get('rows_truncated', 0)} truncated to the model's context, {st['pending_changes']} queued changes",
        f"  speed     {st['rows_per_second'] or '-'} rows/s, ETA {_fmt_secs(st.get('eta_seconds'))}, "
        f"elapsed {_fmt_secs(st.get('elapsed_seconds'))}",
        f"  rollout   {st['rollout_percent']:.0f}% of queries on the new column",
        f"  index     {st.get('index') or '-'}",
    ]
    if st.get("reason"):
        lines.append(f"  reason    {st['reason']}")
    lag = st.get("follow_lag") or {}
    if lag:
        rates = ""
        if lag.get("arrival_rows_per_second") is not None:
            rates = f", {lag['arrival_rows_per_second']} rows/s arriving, {lag['embed_rows_per_second']} embedded"
        behind = (
            "  FALLING BEHIND: add migrators or raise swarm.max_rows_per_second" if lag.get("falling_behind") else ""
        )
        lines.append(
            f"  lag       {lag['queued']} changed rows queued, oldest {_fmt_secs(lag.get('oldest_seconds'))}{rates}"
            f"{behind}"
        )
        if lag.get("last_error"):
            lines.append(f"  follow    last error: {lag['last_error']}")
    check = st.get("legacy_check")
    if check:
        lines.append(f"  legacy    {mig.legacy_summary(check)}")
    sizes = st.get("sizes") or {}
    if sizes:
        mb = lambda b: f"{(b or 0) / 2**20:,.0f} MB"  # noqa: E731
        lines.append(
            "  size      "
            + "; ".join(
                f"{when} {mb(s.get('table_bytes'))} + {mb(s.get('index_bytes'))} indexes" for when, s in sizes.items()
            )
        )
    if st.get("validation"):
        from swarm.quality import record

        lines.append(f"  validated {record.line(st['validation'])} ({st.get('validation_rounds', 1)} rounds)")
    by_state: dict[str, int] = {}
    for s in st["shards"]:
        by_state[s["state"]] = by_state.get(s["state"], 0) + 1
    lines.append("  shards    " + ", ".join(f"{n} {k}" for k, n in sorted(by_state.items())))
    for a in st.get("agents", []):
        lines.append(
            f"  agent     {a['name']:<18} {a['kind']:<16} {a['state'] or '-':<8} rss {a['rss_mb'] or 0:.0f} MB"
        )
    for a in st.get("alerts", []):
        lines.append(f"  ALERT     {a.get('name')} ({a.get('severity')}): {a.get('condition')}")
    for d in st.get("dead_letters", [])[:5]:
        lines.append(f"  dead      row {d['row_id']}: {d['reason']}")
    return "\n".join(lines)


def render_validation(r: dict[str, Any]) -> str:
    """A validation round as text (``python -m swarm validate``): the verdict, model quality (exact search on
    both arms) apart from index recall (each arm's ANN search against its exact one), slices, scores."""
    from swarm.quality import record

    lines = [f"validation of migration {r.get('migration')}: {record.line(r)}"]
    if r.get("legacy") and r.get("new"):
        k = r.get("k")
        qs = r.get("query_set") or {}
        ann, rec, st, ix = (r.get(x) or {} for x in ("ann", "index_recall", "settings", "indexes"))

        def arms(label: str, get: Any, d: int = 3) -> str:
            return f"  {label:<34}{_fmt(get('legacy'), d):>10}{_fmt(get('new'), d):>10}"

        lines += [
            f"{r.get('judged', 0)} of {r.get('queries', 0)} sampled queries judged ({qs.get('judgeable', '-')} of "
            f"{qs.get('queries', '-')} in the set have their answers migrated), k = {k}"
            + (" (partial: both arms searched only the rows with a new vector)" if r.get("partial") else ""),
            "",
            f"{'model quality (exact search)':<36}{'legacy':>10}{'new':>10}",
            arms("MRR@10", lambda a: r[a].get("mrr_at_10")),
            arms("nDCG@10", lambda a: r[a].get("ndcg_at_10")),
            arms(f"recall@{k}", lambda a: r[a].get("recall_at_k")),
        ]
        if r.get("mrr_drop") is not None and r.get("mrr_drop_ci"):
            lo, hi = r["mrr_drop_ci"]
            lines.append(f"  MRR@10 drop {_fmt(r['mrr_drop'])}, 95% CI [{_fmt(lo)}, {_fmt(hi)}]")
        lines += [
            f"  overlap@{k} between the arms {_fmt(r.get('overlap_at_k'))}",
            "",
            f"{'index recall (ANN, each arm its own)':<36}{'legacy':>10}{'new':>10}",
            arms("index", lambda a: ", ".join(i["method"] for i in ix.get(a) or []) or "none"),
            arms(f"recall@{k} against exact", lambda a: (rec.get(a) or {}).get("recall")),
            arms("MRR@10 through the index", lambda a: (ann.get(a) or {}).get("mrr_at_10")),
            arms("search p50 (ms)", lambda a: (ann.get(a) or {}).get("search_p50_ms"), 1),
            arms("search p95 (ms)", lambda a: (ann.get(a) or {}).get("search_p95_ms"), 1),
            arms("errors", lambda a: (r.get("errors_by_arm") or {}).get(a, 0)),
            f"  settings: legacy {_settings(st.get('legacy'))}; new {_settings(st.get('new'))}",
        ]
        for name, sl in (r.get("slices") or {}).items():
            iv = sl.get("interval")
            drop = f"drop {_fmt(iv['mean'])} [{_fmt(iv['lo'])}, {_fmt(iv['hi'])}]: " if iv else ""
            lines.append(f"  slice {name}: {sl['queries']} queries, {drop}{sl['verdict']}")
        sc = r.get("scores") or {}
        top = sc.get("top1_similarity") or {}
        if top.get("legacy") and top.get("new"):
            lines.append(
                f"  top-1 similarity p50 legacy {_fmt(top['legacy']['p50'])}, new {_fmt(top['new']['p50'])}; "
                f"KS {_fmt(sc.get('ks'))} (fixed similarity thresholds move with the model)"
            )
    lines.append("")
    word = "FAILED" if r.get("verdict") == "FAIL" else "NOT PASSED"
    lines += [f"{word}: {x}" for x in r.get("failures", [])] or ["all gates passed"]
    return "\n".join(lines)


def _fmt(v: Any, d: int = 3) -> str:
    if v is None:
        return "-"
    return f"{v:.{d}f}" if isinstance(v, float) else str(v)


def _settings(s: dict[str, Any] | None) -> str:
    return f"hnsw.ef_search {s['ef_search']}, ivfflat.probes {s['probes']}" if s else "-"


def summary(st: dict[str, Any]) -> str:
    rate = None
    if st.get("elapsed_seconds"):
        rate = st["rows_done"] / max(st["elapsed_seconds"], 1e-9)
    head = {"completed": "completed", "rolled_back": "ROLLED BACK", "failed": "FAILED"}.get(st["state"], st["state"])
    share = f" ({100.0 * st['rows_done'] / st['rows_total']:.1f}% of the table)" if st.get("rows_total") else ""
    lines = [
        f"migration {st['id']} {head}: {st['rows_done']}/{st['rows_total']} rows embedded{share}, "
        f"{st['rows_failed']} dead-lettered, "
        + (f"{st['rows_truncated']} truncated, " if st.get("rows_truncated") else "")
        + f"{len(st['shards'])} shards, {_fmt_secs(st.get('elapsed_seconds'))}"
        + (f", {rate:.0f} rows/s" if rate else ""),
    ]
    if st.get("index"):
        lines.append(f"index {st['index']} on {st['table']}.{st['column']}")
    if st.get("reason"):
        lines.append(f"reason: {st['reason']}")
    if st.get("validation"):
        from swarm.quality import record

        lines.append(f"validation: {st.get('validation_rounds', 1)} rounds, last {record.line(st['validation'])}")
    return "\n".join(lines)


def validation_status(conn: Any, mid: int) -> dict[str, Any]:
    """``validation`` (the last round, as stored) and ``validation_rounds`` for a status dict; empty if none."""
    from swarm.quality import record

    last = record.last_round(conn, mid)
    if last is None:
        return {}
    n = conn.execute(
        "SELECT count(*) FROM swarm.events WHERE migration_id = %s AND kind = 'validation'", [mid]
    ).fetchone()[0]
    return {"validation": last, "validation_rounds": int(n)}


def watch(
    db: Database,
    m: mig.Migration,
    *,
    coord: Any = None,
    live: bool = True,
    quiet: bool = False,
    poll: float = 0.5,
) -> dict[str, Any]:
    """Show a migration until it ends; returns the final status. It only reads: the coordinator drives the
    migration (and resumes it by itself if Ray restarts it), whether or not anyone watches."""
    if coord is not None and m.state == "completed":
        # A catch-up pass: wait for the coordinator's run rather than the (already terminal) state.
        import ray

        ray.get(coord.wait.remote())
    last_line = 0.0
    seen_rounds = None
    display = _Live() if live else None
    try:
        unreachable_said = False
        while True:
            try:
                mm = db.run(lambda c: mig.load(c, m.id), what="load")
                st = db.run(partial(mig.status, m=mm), what="status")
                st.update(db.run(partial(validation_status, mid=m.id), what="validation"))
            except (psycopg.Error, DatabaseError) as e:
                # The database is away: the coordinator waits for it and resumes; so does the view.
                if not unreachable_said and not quiet:
                    print(f"database unreachable ({type(e).__name__}); waiting for it", flush=True)
                    unreachable_said = True
                time.sleep(max(poll, 2.0))
                continue
            unreachable_said = False
            if display:
                display.update(st)
            elif not quiet:
                if seen_rounds is not None and st.get("validation_rounds", 0) > seen_rounds:
                    from swarm.quality import record

                    print(f"validation {record.line(st['validation'])}", flush=True)
                seen_rounds = st.get("validation_rounds", 0)
                if time.monotonic() - last_line > 5:
                    print(
                        f"[{st['state']}/{st.get('phase')}] {st['rows_done']}/{st['rows_total']} rows, "
                        f"{st['rows_per_second'] or '-'} rows/s, ETA {_fmt_secs(st.get('eta_seconds'))}",
                        flush=True,
                    )
                    last_line = time.monotonic()
            if st["state"] in (*mig.TERMINAL, mig.PAUSED):
                return st
            time.sleep(poll)
    finally:
        if display:
            display.stop()


class _Live:
    """rich Live view: overall bar, rows/s, ETA and a per-shard table."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console()
        self.live = Live(console=self.console, refresh_per_second=4, transient=False)
        self.live.start()

    def update(self, st: dict[str, Any]) -> None:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        total = max(1, st["rows_total"])
        head = Table.grid(padding=(0, 2))
        head.add_row(
            f"[bold]{st['migration']}[/] #{st['id']}",
            f"{st['state']}/{st.get('phase') or '-'}",
            f"{st['rows_done']:,}/{st['rows_total']:,} rows",
            f"{st['rows_per_second'] or '-'} rows/s",
            f"ETA {_fmt_secs(st.get('eta_seconds'))}",
            f"{st['rows_failed']} dead-lettered",
            f"{st['pending_changes']} queued changes",
        )
        bar = ProgressBar(total=total, completed=min(total, st["rows_done"] + st["rows_failed"]), width=60)
        shards = Table(show_header=True, header_style="bold", box=None, padding=(0, 1))
        for col in ("shard", "state", "rows", "worker", "attempts"):
            shards.add_column(col)
        active = [s for s in st["shards"] if s["state"] != "done"][:12]
        for s in active:
            shards.add_row(
                str(s["id"]),
                s["state"],
                f"{s['rows_done']}/{s['rows_planned']}",
                s["worker"] or "-",
                str(s["attempts"]),
            )
        done = sum(1 for s in st["shards"] if s["state"] == "done")
        parts: list[Any] = [head, bar, f"shards: {done}/{len(st['shards'])} done", shards]
        if st.get("validation"):
            from swarm.quality import record

            v = st["validation"]
            colour = {"PASS": "green", "FAIL": "red"}.get(v.get("verdict", ""), "yellow")
            parts.append(f"[{colour}]validation[/] " + record.line(v).replace("[", "\\["))
        ix = st.get("index_progress")
        if ix:
            parts.append(
                f"index: {ix['phase']} {ix['tuples_done'] or ix['blocks_done']}/"
                f"{ix['tuples_total'] or ix['blocks_total']}"
            )
        self.live.update(Group(*parts))

    def stop(self) -> None:
        self.live.stop()
