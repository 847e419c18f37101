"""The migration's report: Markdown and JSON with PNG charts under ``reports/``.

Everything comes from the database: the migration record and its shards (``swarm.migrations``,
``swarm.shards``), the throughput over time (``swarm.batches``), validation, rollout steps, alerts, rollback
and decommission (``swarm.events``). Charts (matplotlib, Agg backend, no display needed): throughput over
time, per-shard durations, legacy vs new search quality and latency.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swarm import migration as mig
from swarm.core.log import get_logger

if TYPE_CHECKING:
    import psycopg

    from swarm.core.config import Config
    from swarm.store.db import Database

log = get_logger()


def _events(conn: psycopg.Connection, mid: int, kind: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT detail, at FROM swarm.events WHERE migration_id = %s AND kind = %s ORDER BY id", [mid, kind]
    ).fetchall()
    return [{**d, "at": at.isoformat()} for d, at in rows]


def collect(conn: psycopg.Connection, mid: int) -> dict[str, Any]:
    """All the numbers of one migration, as JSON-safe data."""
    m = mig.load(conn, mid)
    status = mig.status(conn, m)
    # The migration's own batches: up to its end (a decommission re-embeds a few rows much later).
    until = "(SELECT coalesce(finished_at, now()) FROM swarm.migrations WHERE id = %s)"
    batches = conn.execute(
        "SELECT extract(epoch FROM at)::float8, seconds, rows FROM swarm.batches "
        f"WHERE migration_id = %s AND at <= {until} ORDER BY at",
        [mid, mid],
    ).fetchall()
    shards = conn.execute(
        "SELECT shard_id, state, rows_done, rows_failed, worker, attempt, "
        "extract(epoch FROM finished_at - started_at) FROM swarm.shards WHERE migration_id = %s "
        "ORDER BY shard_id",
        [mid],
    ).fetchall()
    totals = conn.execute(
        "SELECT count(*), coalesce(sum(rows), 0), coalesce(sum(embed_seconds), 0), "
        "extract(epoch FROM max(at) - min(at - make_interval(secs => seconds))) FROM swarm.batches "
        f"WHERE migration_id = %s AND at <= {until}",
        [mid, mid],
    ).fetchone()
    validations = _events(conn, mid, "validation")
    return {
        "migration": {k: v for k, v in m.as_dict().items() if k != "config"},
        "config": m.config,
        "status": status,
        "backfill": {
            "batches": int(totals[0]),
            "rows": int(totals[1]),
            "embed_seconds": round(float(totals[2]), 2),
            "wall_seconds": round(float(totals[3]), 2) if totals[3] is not None else None,
            "rows_per_second": (round(int(totals[1]) / float(totals[3]), 1) if totals[3] else None),
        },
        "throughput": _throughput([(float(t), float(sec), int(r)) for t, sec, r in batches]),
        "shards": [
            {
                "id": s[0],
                "state": s[1],
                "rows_done": int(s[2]),
                "rows_failed": int(s[3]),
                "worker": s[4],
                "attempts": int(s[5]),
                "seconds": round(float(s[6]), 3) if s[6] is not None else None,
            }
            for s in shards
        ],
        "validation": validations[-1] if validations else None,
        "validations": len(validations),
        "rollout": _events(conn, mid, "rollout_step"),
        "alerts": _events(conn, mid, "alert"),
        "rollback": _last(_events(conn, mid, "rollback")),
        "decommission": _last(_events(conn, mid, "decommission")),
    }


def _last(items: list[dict[str, Any]]) -> dict[str, Any] | None:
    return items[-1] if items else None


def _throughput(batches: list[tuple[float, float, int]], points: int = 120) -> list[dict[str, float]]:
    """Rows per second over time from (end time, duration, rows) per batch, each batch's rows spread over the
    time it took, in at most ``points`` buckets; with the cumulative rows at the end of each bucket."""
    if not batches:
        return []
    t0 = min(at - sec for at, sec, _ in batches)
    span = max(at for at, _, _ in batches) - t0
    width = max(span / points, 0.5)
    n = int(span // width) + 1
    rows = [0.0] * n
    for at, sec, r in batches:
        start, end = at - sec - t0, at - t0
        if end - start <= 0:
            rows[min(n - 1, int(end // width))] += r
            continue
        b = int(start // width)
        while b < n and b * width < end:
            lo, hi = max(start, b * width), min(end, (b + 1) * width)
            rows[b] += r * max(0.0, hi - lo) / (end - start)
            b += 1
    out: list[dict[str, float]] = []
    total = 0.0
    for i, rate in enumerate(rows):
        total += rate
        out.append(
            {
                "t": round(i * width, 3),
                "rows_per_second": round(rate / width, 2),
                "rows_done": float(round(total)),
            }
        )
    return out


# ------------------------------------------------------------------------------------------------------------
# Charts
# ------------------------------------------------------------------------------------------------------------
def charts(data: dict[str, Any], out_dir: Path, stem: str) -> dict[str, str]:
    """Write the PNG charts; returns {chart: path}. Without matplotlib, none (logged)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("report.no_charts", reason="matplotlib is not installed")
        return {}
    paths: dict[str, str] = {}

    if data["throughput"]:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ts = [p["t"] for p in data["throughput"]]
        ax.plot(ts, [p["rows_per_second"] for p in data["throughput"]], drawstyle="steps-post", label="rows/s")
        ax.set_xlabel("seconds since the first batch started")
        ax.set_ylabel("rows embedded per second")
        ax2 = ax.twinx()
        ax2.plot(
            ts,
            [p["rows_done"] for p in data["throughput"]],
            color="tab:gray",
            linestyle="--",
            label="rows done",
        )
        ax2.set_ylabel("rows done")
        ax2.set_ylim(bottom=0)
        ax.set_title(f"Backfill throughput (migration {data['migration']['id']})")
        ax.grid(alpha=0.3)
        paths["throughput"] = _save(fig, out_dir / f"{stem}-throughput.png")
        plt.close(fig)

    timed = [s for s in data["shards"] if s["seconds"] is not None]
    if timed:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        ax.bar([str(s["id"]) for s in timed], [s["seconds"] for s in timed])
        ax.set_xlabel("shard")
        ax.set_ylabel("seconds")
        ax.set_title("Per-shard duration")
        if len(timed) > 30:
            ax.set_xticks([])
        paths["shards"] = _save(fig, out_dir / f"{stem}-shards.png")
        plt.close(fig)

    v = data.get("validation")
    if v and v.get("legacy") and v.get("new"):
        candidates: list[tuple[str, str | None]] = [
            ("MRR@10", "mrr_at_10"),
            ("nDCG@10", "ndcg_at_10"),
            (f"recall@{v.get('k', 10)}", "recall_at_k"),
        ]
        names_vals = [(label, key) for label, key in candidates if v["legacy"].get(key) is not None]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5), gridspec_kw={"width_ratios": [3, 2]})
        if v.get("overlap_at_k") is not None:
            names_vals.append((f"overlap@{v.get('k', 10)}", None))
        x = range(len(names_vals))
        legacy_vals = [v["legacy"][k] if k else 1.0 for _, k in names_vals]
        new_vals = [v["new"][k] if k else v["overlap_at_k"] for _, k in names_vals]
        ax1.bar([i - 0.2 for i in x], legacy_vals, width=0.4, label="legacy")
        ax1.bar([i + 0.2 for i in x], new_vals, width=0.4, label="new")
        ax1.set_xticks(list(x), [label for label, _ in names_vals])
        ax1.set_ylim(0, 1.05)
        ax1.set_title("Search quality")
        ax1.legend()
        lat = [("p50", "search_p50_ms"), ("p95", "search_p95_ms")]
        ax2.bar([i - 0.2 for i in range(2)], [v["legacy"].get(k) or 0 for _, k in lat], width=0.4, label="legacy")
        ax2.bar([i + 0.2 for i in range(2)], [v["new"].get(k) or 0 for _, k in lat], width=0.4, label="new")
        ax2.set_xticks([0, 1], [label for label, _ in lat])
        ax2.set_ylabel("ms")
        ax2.set_title("Search latency")
        fig.tight_layout()
        paths["metrics"] = _save(fig, out_dir / f"{stem}-metrics.png")
        plt.close(fig)
    return paths


def _save(fig: Any, path: Path) -> str:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return str(path)


# ------------------------------------------------------------------------------------------------------------
# Markdown
# ------------------------------------------------------------------------------------------------------------
def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown(data: dict[str, Any], chart_paths: dict[str, str], out_dir: Path) -> str:
    m, st, bf = data["migration"], data["status"], data["backfill"]
    t = m["target"]
    lines = [
        f"# Migration {m['id']}: {m['name']}",
        "",
        f"- **State**: {st['state']} ({st.get('phase') or '-'})"
        + (f", reason: {m['reason']}" if m.get("reason") else ""),
        f"- **Table**: `{t['table']}`, legacy column `{t['legacy_column']}`, new column `{t['new_column']}` "
        f"{m['column_type']}({m['dimension']})",
        f"- **New model**: {m['model_id']} (sha256 {m['model_sha256'][:16]})",
        f"- **Rows**: {st['rows_done']}/{st['rows_total']} embedded, {st['rows_failed']} dead-lettered, "
        f"{st.get('rows_truncated', 0)} truncated to the model's context (embedded from their first tokens)",
        f"- **Backfill**: {bf['batches']} batches, {bf['rows']} rows in {_f(bf['wall_seconds'], 1)} s "
        f"({_f(bf['rows_per_second'], 1)} rows/s), {_f(bf['embed_seconds'], 1)} s embedding",
        f"- **Rollout**: {st['rollout_percent']:.0f}% of queries on the new column",
        f"- **Legacy checksum at plan**: `{m.get('legacy_checksum')}`",
        "",
    ]
    v = data.get("validation")
    if v:
        lines += [
            "## Validation",
            "",
            f"{v.get('queries', 0)} queries ({v.get('labelled', 0)} labelled), k = {v.get('k')}"
            + (", partial (backfill running)" if v.get("partial") else "")
            + f"; overlap@k between the arms: {_f(v.get('overlap_at_k'))}.",
            "",
            "| metric | legacy | new |",
            "|---|---|---|",
        ]
        for label, key in [
            ("MRR@10", "mrr_at_10"),
            ("nDCG@10", "ndcg_at_10"),
            (f"recall@{v.get('k')}", "recall_at_k"),
            ("search p50 (ms)", "search_p50_ms"),
            ("search p95 (ms)", "search_p95_ms"),
            ("latency p95 incl. embedding (ms)", "latency_p95_ms"),
            ("errors", "errors"),
        ]:
            lines.append(f"| {label} | {_f((v.get('legacy') or {}).get(key))} | {_f((v.get('new') or {}).get(key))} |")
        lines.append("")
        if v.get("failures"):
            lines += ["**Failed gates:**", ""] + [f"- {f}" for f in v["failures"]] + [""]
        else:
            lines += ["All gates passed.", ""]
    if data["rollout"]:
        lines += [
            "## Rollout",
            "",
            "| step | queries | on new | new errors | new p95 search (ms) | result |",
            "|---|---|---|---|---|---|",
        ]
        for s in data["rollout"]:
            new = (s.get("arms") or {}).get("new") or {}
            lines.append(
                f"| {s['percent']}% | {s.get('replayed')} | {new.get('queries', 0)} | "
                f"{new.get('errors', 0)} | {_f(new.get('p95_search_ms'), 2)} | "
                f"{'; '.join(s['failures']) if s.get('failures') else 'passed'} |"
            )
        lines.append("")
    if data["alerts"]:
        lines += (
            ["## Alerts", ""]
            + [
                f"- {a['at']}: **{a['name']}** {a['state']} ({a.get('condition')}, "
                f"value {_f(a.get('value'))}, "
                f"{a.get('severity')})"
                for a in data["alerts"]
            ]
            + [""]
        )
    if data["rollback"]:
        r = data["rollback"]
        lines += [
            "## Rollback",
            "",
            f"- at {r['at']}: {r.get('reason')}",
            f"- share to 0% in {r.get('share_zero_seconds')} s; legacy column intact: {r.get('legacy_intact')}",
            "",
        ]
    if data["decommission"]:
        d = data["decommission"]
        lines += [
            "## Decommission",
            "",
            f"- at {d['at']}: dropped `{d.get('dropped_column')}` "
            f"(indexes: {', '.join(d.get('dropped_indexes') or []) or 'none'})",
            f"- archive table `{d.get('archive_table')}`: {d.get('archived_rows')} rows, checksum "
            f"`{d.get('archive_checksum')}`" + (f"; file `{d['archive_file']}`" if d.get("archive_file") else ""),
            "",
        ]
    if data["shards"]:
        secs = [s["seconds"] for s in data["shards"] if s["seconds"] is not None]
        lines += [
            "## Shards",
            "",
            f"{len(data['shards'])} shards; duration min {_f(min(secs) if secs else None, 2)} s, "
            f"max {_f(max(secs) if secs else None, 2)} s; retried: "
            f"{sum(1 for s in data['shards'] if s['attempts'] > 1)}.",
            "",
        ]
    if chart_paths:
        lines += ["## Charts", ""]
        for name, path in chart_paths.items():
            lines.append(f"![{name}]({Path(path).relative_to(out_dir)})")
        lines.append("")
    return "\n".join(lines)


def write(cfg: Config, db: Database, mid: int, *, out_dir: str | Path | None = None) -> dict[str, str]:
    """Write ``reports/migration-<id>.{md,json}`` and the charts; returns {kind: path}."""
    out = Path(out_dir) if out_dir else cfg.path("reports")
    out.mkdir(parents=True, exist_ok=True)
    data = db.run(lambda c: collect(c, mid), what="report")
    stem = f"migration-{mid}"
    chart_paths = charts(data, out, stem)
    data["charts"] = {k: str(Path(p).name) for k, p in chart_paths.items()}
    json_path = out / f"{stem}.json"
    md_path = out / f"{stem}.md"
    json_path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    md_path.write_text(markdown(data, chart_paths, out), encoding="utf-8")
    log.info("report.written", migration=mid, markdown=str(md_path))
    return {"markdown": str(md_path), "json": str(json_path), **chart_paths}
