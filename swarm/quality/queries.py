"""The query set: labelled (``relevant_ids``) or not, optionally sliced (``slice``: a language, a team, a content
length bucket; each slice with enough queries is gated on its own), read from a JSONL file or a table, and
sampled."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from swarm.core.errors import ConfigError

if TYPE_CHECKING:
    import psycopg


@dataclass(frozen=True)
class Query:
    """One query, with the ids of the rows that answer it (empty when the set has no labels) and its slice."""

    text: str
    relevant: frozenset[str] = frozenset()
    slice: str | None = None

    @property
    def labelled(self) -> bool:
        return bool(self.relevant)


def load_queries(path: str | Path, *, key: str = "validation.queries") -> list[Query]:
    """Read a JSONL query set: one ``{"query": "...", "relevant_ids": [...], "slice": "..."}`` per line (labels
    and slice optional).

    A bad line is a :class:`~swarm.errors.ConfigError` naming the file, the line and what it should hold.
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError(
            key,
            str(p),
            "file not found; run `python -m swarm demo seed` or point it at a JSONL "
            'query set ({"query": ..., "relevant_ids": [...]} per line)',
        ) from None
    out: list[Query] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            text = obj["query"]
            rel = obj.get("relevant_ids") or []
            part = obj.get("slice")
            if not isinstance(text, str) or not text.strip() or not isinstance(rel, list):
                raise TypeError
            if part is not None and not isinstance(part, (str, int)):
                raise TypeError
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ConfigError(
                f"{key} ({p.name} line {n})",
                line[:80],
                'expected {"query": "<text>", "relevant_ids": [<id>, ...], "slice": "<name>"} '
                "(relevant_ids and slice optional)",
            ) from None
        out.append(Query(text, frozenset(str(r) for r in rel), str(part) if part is not None else None))
    if not out:
        raise ConfigError(key, str(p), 'holds no queries; add JSONL lines with a "query" key')
    return out


def queries_from_table(conn: psycopg.Connection, table: str) -> list[Query]:
    """A query set kept in a table with columns ``query``, (optional) ``relevant_ids`` (an array of keys of any
    type, uuid included) and (optional) ``slice``."""
    from psycopg import sql

    from swarm.store.sql import regclass_text, split_table, table_ident

    cols = {
        r[0]
        for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped",
            [regclass_text(*split_table(table))],  # each part quoted: "Acme.EvalQueries" keeps its case
        ).fetchall()
    }
    if "query" not in cols:
        raise ConfigError("validation.queries", f"table:{table}", "no such table with a `query` column")
    rel = sql.SQL("relevant_ids::text[]") if "relevant_ids" in cols else sql.SQL("NULL::text[]")
    part = sql.SQL("slice::text") if "slice" in cols else sql.SQL("NULL::text")
    rows = conn.execute(
        sql.SQL("SELECT query, {rel}, {part} FROM {t} ORDER BY 1").format(rel=rel, part=part, t=table_ident(table))
    ).fetchall()
    return [Query(q, frozenset(str(r) for r in (ids or [])), s) for q, ids, s in rows if q and q.strip()]


def sample(queries: Sequence[Query], n: int, *, seed: int = 0) -> list[Query]:
    """``n`` queries drawn without replacement, the same ones for the same seed (all when there are fewer)."""
    if len(queries) <= n:
        return list(queries)
    return random.Random(seed).sample(list(queries), n)
