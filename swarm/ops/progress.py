"""What people look at: the live terminal view of a migration, its closing summary, ``status`` as text."""

from __future__ import annotations

import time
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
        verdict = {True: "untouched", False: "CHANGED", None: "not proved"}[check.get("legacy_intact")]
        lines.append(
            f"  legacy    {verdict} ({check.get('legacy_rows_unchanged', '-')} rows as planned, "
            f"{check.get('rows_changed_by_application', '-')} changed by the application, "
            f"{check.get('rows_inserted', '-')} inserted, {check.get('rows_deleted', '-')} deleted)"
        )
    sizes = st.get("sizes") or {}
    if sizes:
        mb = lambda b: f"{(b or 0) / 2**20:,.0f} MB"  # noqa: E731
        lines.append(
            "  size      "
            + "; ".join(
                f"{when} {mb(s.get('table_bytes'))} + {mb(s.get('index_bytes'))} indexes" for when, s in sizes.items()
            )
        )
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


def summary(st: dict[str, Any]) -> str:
    rate = None
    if st.get("elapsed_seconds"):
        rate = st["rows_done"] / max(st["elapsed_seconds"], 1e-9)
    head = {"completed": "completed", "rolled_back": "ROLLED BACK", "failed": "FAILED"}.get(st["state"], st["state"])
    lines = [
        f"migration {st['id']} {head}: {st['rows_done']}/{st['rows_total']} rows embedded, "
        f"{st['rows_failed']} dead-lettered, "
        + (f"{st['rows_truncated']} truncated, " if st.get("rows_truncated") else "")
        + f"{len(st['shards'])} shards, {_fmt_secs(st.get('elapsed_seconds'))}"
        + (f", {rate:.0f} rows/s" if rate else ""),
    ]
    if st.get("index"):
        lines.append(f"index {st['index']} on {st['table']}.{st['column']}")
    if st.get("reason"):
        lines.append(f"reason: {st['reason']}")
    return "\n".join(lines)


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
    display = _Live() if live else None
    try:
        unreachable_said = False
        while True:
            try:
                mm = db.run(lambda c: mig.load(c, m.id), what="load")
                st = db.run(lambda c, mm=mm: mig.status(c, mm), what="status")
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
            elif not quiet and time.monotonic() - last_line > 5:
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
        ix = st.get("index_progress")
        if ix:
            parts.append(
                f"index: {ix['phase']} {ix['tuples_done'] or ix['blocks_done']}/"
                f"{ix['tuples_total'] or ix['blocks_total']}"
            )
        self.live.update(Group(*parts))

    def stop(self) -> None:
        self.live.stop()
