"""The validation rounds on record (``swarm.events``, kind ``validation``) and how they read in one line.

Written by :func:`agents.rounds.conclude`; read by ``status``, the live view, the report and the coordinator
after a restart. Each stored round carries its ``verdict`` (PASS / FAIL / INCONCLUSIVE), its ``stage``
(``backfill``, ``final`` or ``manual`` for ``python -m swarm validate``) and its ``failures``: every reason
the verdict is not PASS (older readers, such as ``decommission``, refuse on a non-empty list).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg


def rounds(conn: psycopg.Connection, mid: int) -> list[dict[str, Any]]:
    """Every validation of migration ``mid``, oldest first, each with ``at`` (ISO time)."""
    rows = conn.execute(
        "SELECT detail, at FROM swarm.events WHERE migration_id = %s AND kind = 'validation' ORDER BY id", [mid]
    ).fetchall()
    return [{**d, "at": at.isoformat()} for d, at in rows]


def last_round(conn: psycopg.Connection, mid: int) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT detail, at FROM swarm.events WHERE migration_id = %s AND kind = 'validation' ORDER BY id DESC LIMIT 1",
        [mid],
    ).fetchone()
    return {**row[0], "at": row[1].isoformat()} if row else None


def next_round(conn: psycopg.Connection, mid: int) -> int:
    """The number the next round of ``mid`` gets (rounds are numbered from 1 per migration)."""
    row = conn.execute(
        "SELECT coalesce(max((detail->>'round')::int), 0) FROM swarm.events "
        "WHERE migration_id = %s AND kind = 'validation'",
        [mid],
    ).fetchone()
    return int(row[0]) + 1 if row else 1


def last_backfill_percent(conn: psycopg.Connection, mid: int) -> float | None:
    """Where the last round during the backfill was (a restarted coordinator goes on from there)."""
    row = conn.execute(
        "SELECT (detail->>'percent_embedded')::float8 FROM swarm.events WHERE migration_id = %s "
        "AND kind = 'validation' AND detail->>'stage' = 'backfill' ORDER BY id DESC LIMIT 1",
        [mid],
    ).fetchone()
    return float(row[0]) if row and row[0] is not None else None


def summary(r: dict[str, Any]) -> dict[str, Any]:
    """A round's headline figures (``status --json``)."""
    recall = r.get("index_recall") or {}
    return {
        "round": r.get("round"),
        "stage": r.get("stage"),
        "verdict": r.get("verdict") or ("FAIL" if r.get("failures") else "PASS"),
        "percent_embedded": r.get("percent_embedded"),
        "judged": r.get("judged", r.get("queries")),
        "legacy_mrr_at_10": (r.get("legacy") or {}).get("mrr_at_10"),
        "new_mrr_at_10": (r.get("new") or {}).get("mrr_at_10"),
        "mrr_drop": r.get("mrr_drop"),
        "mrr_drop_ci": r.get("mrr_drop_ci"),
        "overlap_at_k": r.get("overlap_at_k"),
        "index_recall": {arm: (recall.get(arm) or {}).get("recall") for arm in ("legacy", "new")},
        "seconds": r.get("seconds"),
        "failures": r.get("failures") or [],
        "at": r.get("at"),
    }


def _f(v: Any, d: int = 3) -> str:
    return "-" if v is None else f"{v:.{d}f}"


def line(r: dict[str, Any]) -> str:
    """One round in one line: where, the verdict, model quality (exact), index recall, cost."""
    s = summary(r)
    where = f"{s['stage'] or 'validation'}"
    if s["percent_embedded"] is not None:
        where += f", {s['percent_embedded']:.0f}% embedded"
    ci = s["mrr_drop_ci"]
    if s["mrr_drop"] is not None:
        quality = (
            f"MRR@10 legacy {_f(s['legacy_mrr_at_10'])} new {_f(s['new_mrr_at_10'])}, drop {_f(s['mrr_drop'])}"
            + (f" [{_f(ci[0])}, {_f(ci[1])}]" if ci else "")
        )
    else:
        quality = f"overlap@k {_f(s['overlap_at_k'])}" + (
            f" [{_f(r['overlap_ci'][0])}, {_f(r['overlap_ci'][1])}]" if r.get("overlap_ci") else ""
        )
    rec = s["index_recall"]
    return (
        f"round {s['round']} ({where}): {s['verdict']} | {quality} on {s['judged']} queries (exact) | "
        f"index recall legacy {_f(rec['legacy'], 2)} new {_f(rec['new'], 2)} | {_f(s['seconds'], 1)} s"
    )
