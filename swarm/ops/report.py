"""The migration's report: Markdown and JSON with PNG charts under ``reports/``.

Everything comes from the database: the migration record and its shards (``swarm.migrations``,
``swarm.shards``), the throughput over time (``swarm.batches``), validation rounds, rollout steps, alerts,
rollback and decommission (``swarm.events``). Charts (matplotlib, Agg backend, no display needed): throughput
over time, per-shard durations, legacy vs new search quality (model quality by exact search next to what each
arm's index gives) and latency, quality against % migrated over the validation rounds, and the distributions of
top-1 similarity of both models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swarm import migration as mig
from swarm.core.log import get_logger
from swarm.quality import record
from swarm.store.db import one

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
    totals = one(
        conn.execute(
            "SELECT count(*), coalesce(sum(rows), 0), coalesce(sum(embed_seconds), 0), "
            "extract(epoch FROM max(at) - min(at - make_interval(secs => seconds))) FROM swarm.batches "
            f"WHERE migration_id = %s AND at <= {until}",
            [mid, mid],
        ).fetchone(),
        "the backfill's totals",
    )
    validations = record.rounds(conn, mid)
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
        # Every round, headline figures only (quality against % migrated).
        "rounds": [
            {
                **record.summary(v),
                "ann": {a: (v.get("ann") or {}).get(a, {}).get("mrr_at_10") for a in ("legacy", "new")},
            }
            for v in validations
        ],
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
        k = v.get("k", 10)
        ann = v.get("ann") or {}
        names = [
            (label, key)
            for label, key in (("MRR@10", "mrr_at_10"), ("nDCG@10", "ndcg_at_10"), (f"recall@{k}", "recall_at_k"))
            if v["legacy"].get(key) is not None
        ]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [3, 2]})
        x = range(len(names))
        for shift, arm, colour in ((-0.3, "legacy", "tab:blue"), (0.1, "new", "tab:orange")):
            ax1.bar(
                [i + shift for i in x],
                [v[arm][key] for _, key in names],
                width=0.2,
                color=colour,
                label=f"{arm}, exact (model)",
            )
            ax1.bar(
                [i + shift + 0.2 for i in x],
                [(ann.get(arm) or {}).get(key) or 0 for _, key in names],
                width=0.2,
                color=colour,
                alpha=0.45,
                hatch="//",
                label=f"{arm}, through its index",
            )
        ax1.set_xticks(list(x), [label for label, _ in names])
        ax1.set_ylim(0, 1.05)
        ax1.set_title(f"Search quality, round {v.get('round', '-')}: {v.get('verdict', '-')}")
        ax1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
        lat = [("p50", "search_p50_ms"), ("p95", "search_p95_ms")]
        for shift, arm in ((-0.2, "legacy"), (0.2, "new")):
            ax2.bar(
                [i + shift for i in range(2)],
                [(ann.get(arm) or {}).get(key) or 0 for _, key in lat],
                width=0.4,
                label=arm,
            )
        ax2.set_xticks([0, 1], [label for label, _ in lat])
        ax2.set_ylabel("ms")
        ax2.set_title("Search latency (through the index)")
        ax2.legend(fontsize=7)
        fig.tight_layout()
        paths["metrics"] = _save(fig, out_dir / f"{stem}-metrics.png")
        plt.close(fig)

    rounds = [r for r in data.get("rounds") or [] if r.get("percent_embedded") is not None]
    if rounds:
        fig, ax = plt.subplots(figsize=(8, 3.8))
        xs = [r["percent_embedded"] for r in rounds]
        for arm, colour in (("legacy", "tab:blue"), ("new", "tab:orange")):
            ys = [r.get(f"{arm}_mrr_at_10") for r in rounds]
            ax.plot(
                xs,
                [y if y is not None else float("nan") for y in ys],
                marker="o",
                color=colour,
                label=f"{arm} MRR@10 (exact)",
            )
            ax.plot(
                xs,
                [(r.get("ann") or {}).get(arm) or float("nan") for r in rounds],
                linestyle=":",
                color=colour,
                label=f"{arm} MRR@10 (its index)",
            )
        marks = {"PASS": ("tab:green", "PASS"), "FAIL": ("tab:red", "FAIL"), "INCONCLUSIVE": ("tab:gray", "?")}
        for r, x in zip(rounds, xs, strict=True):
            colour, text = marks.get(r["verdict"], ("black", r["verdict"]))
            ax.annotate(text, (x, 1.0), color=colour, ha="center", fontsize=7)
        ax.set_xlabel("% of rows embedded when the round ran (verdict above each round; ? = INCONCLUSIVE)")
        ax.set_ylabel("MRR@10")
        ax.set_xlim(0, 105)
        ax.set_ylim(0, 1.08)
        ax.set_title("Validation rounds: quality against % migrated (like with like: migrated rows only)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
        paths["rounds"] = _save(fig, out_dir / f"{stem}-rounds.png")
        plt.close(fig)

    hist = ((v or {}).get("scores") or {}).get("histogram") or {}
    if hist.get("edges"):
        fig, ax = plt.subplots(figsize=(8, 3.5))
        edges = hist["edges"]
        width = edges[1] - edges[0]
        for arm, colour in (("legacy", "tab:blue"), ("new", "tab:orange")):
            ax.bar(
                edges[:-1],
                hist.get(arm) or [0] * (len(edges) - 1),
                width=width,
                align="edge",
                alpha=0.5,
                color=colour,
                label=arm,
            )
        ax.set_xlabel("top-1 cosine similarity (exact search)")
        ax.set_ylabel("queries")
        ax.set_title(f"Score distributions: KS statistic {_f((v or {}).get('scores', {}).get('ks'))}")
        ax.legend()
        paths["scores"] = _save(fig, out_dir / f"{stem}-scores.png")
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
    lines += _table_md(st)
    v = data.get("validation")
    if v:
        lines += _validation_md(v, data.get("rounds") or [])
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


def _table_md(st: dict[str, Any]) -> list[str]:
    """The live table: the legacy column proved row by row, the follow lag, the table's sizes at each step."""
    out: list[str] = []
    check = st.get("legacy_check") or {}
    if check:
        out.append(f"- **Legacy column**: {mig.legacy_summary(check)}")
    lag = st.get("follow_lag") or {}
    if lag:
        out.append(
            f"- **Follow lag**: {lag.get('queued')} changed rows queued, oldest {_f(lag.get('oldest_seconds'), 1)} s"
            + (" (FALLING BEHIND)" if lag.get("falling_behind") else "")
        )
    sizes = st.get("sizes") or {}
    if sizes:
        out += ["", "| when | table (MB) | indexes (MB) |", "|---|---|---|"]
        for when, sz in sizes.items():
            mb = [(sz.get(k) or 0) / 2**20 for k in ("table_bytes", "index_bytes")]
            out.append(f"| {when} | {mb[0]:,.1f} | {mb[1]:,.1f} |")
    return [*out, ""] if out else []


def _validation_md(v: dict[str, Any], rounds: list[dict[str, Any]]) -> list[str]:
    """The validation section: the verdict, model quality apart from index recall, slices, scores, rounds."""
    k = v.get("k")
    qs = v.get("query_set") or {}
    lines = [
        "## Validation",
        "",
        f"**{v.get('verdict') or ('FAIL' if v.get('failures') else 'PASS')}** (round {v.get('round', '-')}, "
        f"{v.get('stage', '-')}, {_f(v.get('percent_embedded'), 1)}% of the rows embedded): "
        f"{v.get('judged', v.get('queries', 0))} of {v.get('queries', 0)} sampled queries judged "
        f"({qs.get('judgeable', '-')} of {qs.get('queries', '-')} in the set had their answers migrated), k = {k}"
        + (", both arms restricted to the rows with a new vector (backfill running)" if v.get("partial") else "")
        + ".",
        "",
    ]
    lg, nw = v.get("legacy") or {}, v.get("new") or {}
    rec, ann = v.get("index_recall") or {}, v.get("ann") or {}
    if lg.get("mrr_at_10") is not None and nw.get("mrr_at_10") is not None:
        diff = nw["mrr_at_10"] - lg["mrr_at_10"]
        ci = v.get("mrr_drop_ci")
        lines.append(
            f"- **Model quality** (exact search on both arms): the new model is {abs(diff):.3f} MRR@10 "
            f"{'better' if diff >= 0 else 'worse'} (legacy {lg['mrr_at_10']:.3f}, new {nw['mrr_at_10']:.3f}"
            + (f"; drop 95% CI [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
            + f", gate validation.max_mrr_drop {((v.get('gates') or {}).get('max_mrr_drop'))})."
        )
    elif v.get("overlap_at_k") is not None:
        ci = v.get("overlap_ci")
        lines.append(
            f"- **Model quality** (exact search): overlap@{k} between the models {v['overlap_at_k']:.3f}"
            + (f" (95% CI [{ci[0]:.3f}, {ci[1]:.3f}])" if ci else "")
            + "."
        )
    settings, indexes = v.get("settings") or {}, v.get("indexes") or {}
    for arm in ("legacy", "new"):
        r = rec.get(arm) or {}
        if r.get("recall") is None:
            continue
        have = indexes.get(arm) or []
        ix = ", ".join(f"{i['method']} ({i['options'] or 'defaults'})" for i in have) or "none (exact scans)"
        st = settings.get(arm) or {}
        knobs = {"hnsw": f"hnsw.ef_search {st.get('ef_search')}", "ivfflat": f"ivfflat.probes {st.get('probes')}"}
        used = ", ".join(dict.fromkeys(knobs[i["method"]] for i in have if i["method"] in knobs))
        lines.append(
            f"- **Index recall, {arm}**: index {ix}"
            + (f", searched at {used}" if used else "")
            + f": it returns {r['recall']:.1%} of the exact top {k}, so it loses "
            f"{r['lost']:.1%} of its recall"
            + (f" ({r['short']} searches came back short)" if r.get("short") else "")
            + (
                f"; MRR@10 {r['mrr_at_10_ann']:.3f} through the index, {r['mrr_at_10_exact']:.3f} exact."
                if r.get("mrr_at_10_ann") is not None
                else "."
            )
        )
    lines += [
        "",
        "| metric | legacy exact | new exact | legacy via its index | new via its index |",
        "|---|---|---|---|---|",
    ]
    for label, key in [("MRR@10", "mrr_at_10"), ("nDCG@10", "ndcg_at_10"), (f"recall@{k}", "recall_at_k")]:
        lines.append(
            f"| {label} | {_f(lg.get(key))} | {_f(nw.get(key))} | {_f((ann.get('legacy') or {}).get(key))} | "
            f"{_f((ann.get('new') or {}).get(key))} |"
        )
    for label, key in [("search p50 (ms)", "search_p50_ms"), ("search p95 (ms)", "search_p95_ms")]:
        lines.append(
            f"| {label} | - | - | {_f((ann.get('legacy') or {}).get(key))} | {_f((ann.get('new') or {}).get(key))} |"
        )
    errs = v.get("errors_by_arm") or {}
    lines += [f"| errors | {errs.get('legacy', '-')} | {errs.get('new', '-')} | | |", ""]
    if v.get("slices"):
        lines += [
            "| slice | queries | legacy MRR@10 | new MRR@10 | drop 95% CI | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for name, sl in v["slices"].items():
            iv = sl.get("interval")
            lines.append(
                f"| {name} | {sl['queries']} | {_f(sl.get('legacy_mrr_at_10'))} | {_f(sl.get('new_mrr_at_10'))} | "
                + (f"[{iv['lo']:.3f}, {iv['hi']:.3f}]" if iv else "-")
                + f" | {sl['verdict']} |"
            )
        lines.append("")
    sc = v.get("scores") or {}
    top = sc.get("top1_similarity") or {}
    if top.get("legacy") and top.get("new"):
        lines += [
            f"**Score distributions** (top-1 cosine similarity, exact search): legacy p10/p50/p90 "
            f"{top['legacy']['p10']:.3f}/{top['legacy']['p50']:.3f}/{top['legacy']['p90']:.3f}, new "
            f"{top['new']['p10']:.3f}/{top['new']['p50']:.3f}/{top['new']['p90']:.3f}; KS statistic "
            f"{_f(sc.get('ks'))}. "
            + (
                "The distributions nearly coincide: similarity thresholds in the application carry over."
                if (sc.get("ks") or 0) < 0.1
                else "A fixed similarity threshold in the application keeps a different share of results with the "
                "new model: re-tune it before the rollout."
            ),
            "",
        ]
    if v.get("failures"):
        head = "**Failed gates:**" if v.get("verdict") == "FAIL" else "**Not passed:**"
        lines += [head, ""] + [f"- {f}" for f in v["failures"]] + [""]
    else:
        lines += ["All gates passed.", ""]
    if rounds:
        lines += [
            "### Rounds",
            "",
            "| round | stage | % embedded | verdict | judged | legacy MRR@10 | new MRR@10 | drop 95% CI | "
            "index recall legacy / new | seconds |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rounds:
            ci = r.get("mrr_drop_ci")
            ir = r.get("index_recall") or {}
            lines.append(
                f"| {r['round']} | {r['stage']} | {_f(r.get('percent_embedded'), 1)} | {r['verdict']} | "
                f"{r.get('judged')} | {_f(r.get('legacy_mrr_at_10'))} | {_f(r.get('new_mrr_at_10'))} | "
                + (f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-")
                + f" | {_f(ir.get('legacy'), 2)} / {_f(ir.get('new'), 2)} | {_f(r.get('seconds'), 1)} |"
            )
        cost = sum(r.get("seconds") or 0 for r in rounds if r.get("stage") == "backfill")
        lines += ["", f"Rounds during the backfill took {cost:.1f} s of validator time in all.", ""]
    return lines


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
