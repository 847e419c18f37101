"""The migration record: ``swarm.migrations`` read back as :class:`Migration`, its state and its events.

The database is the source of truth: a coordinator restarted by Ray, or an ``orchestrate`` run again after it
was killed, reads the migration and its shards back from ``swarm.migrations`` and ``swarm.shards``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from swarm.core.errors import MigrationError
from swarm.store.db import one
from swarm.store.sql import Target

if TYPE_CHECKING:
    from swarm.core.config import Config

TERMINAL = ("completed", "rolled_back", "failed")
#: A transient fault stopped the work; every vector is kept and the migration resumes from its checkpoints.
PAUSED = "paused"


@dataclass(frozen=True)
class Migration:
    id: int
    name: str
    state: str
    phase: str | None
    target: Target
    column_type: str
    dimension: int
    model_id: str
    model_sha256: str
    rows_total: int
    rollout_percent: float
    index_name: str | None
    legacy_checksum: str | None
    rehearsal: bool
    reason: str | None
    config: dict[str, Any]
    table_oid: int | None = None  # the table it was planned on (None: planned by an older swarm)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target"] = asdict(self.target)
        return d


_COLUMNS = (
    "id, name, state, phase, table_name, id_column, key_type, content_column, legacy_column, new_column, "
    "column_type, dimension, model_id, model_sha256, rows_total, rollout_percent, index_name, legacy_checksum, "
    "rehearsal, reason, config, (to_jsonb(m) ->> 'table_oid')::bigint"
)
# Columns added after the first release are read through to_jsonb(m), which gives NULL where an older
# bookkeeping schema does not have them yet (commands that only read, like status, never run init_schema).


def _from_row(r: tuple[Any, ...]) -> Migration:
    (
        mid,
        name,
        state,
        phase,
        table,
        idc,
        ktype,
        content,
        legacy,
        new,
        ctype,
        dim,
        model_id,
        sha,
        rows,
        pct,
        ix,
        chk,
        rehearsal,
        reason,
        config,
        table_oid,
    ) = r
    return Migration(
        id=mid,
        name=name,
        state=state,
        phase=phase,
        target=Target(table, idc, content, legacy, new, ktype),
        column_type=ctype,
        dimension=dim,
        model_id=model_id,
        model_sha256=sha,
        rows_total=rows,
        rollout_percent=pct,
        index_name=ix,
        legacy_checksum=chk,
        rehearsal=rehearsal,
        reason=reason,
        config=config,
        table_oid=table_oid,
    )


def load(conn: psycopg.Connection, migration_id: int) -> Migration:
    r = conn.execute(f"SELECT {_COLUMNS} FROM swarm.migrations m WHERE id = %s", [migration_id]).fetchone()
    if r is None:
        raise MigrationError(f"migration {migration_id} does not exist")
    return _from_row(r)


def latest(conn: psycopg.Connection, cfg: Config | None = None, *, rehearse: bool | None = None) -> Migration | None:
    """The newest migration (of this config's table when given), or None."""
    if (
        one(conn.execute("SELECT to_regclass('swarm.migrations')").fetchone(), "to_regclass('swarm.migrations')")[0]
        is None
    ):
        return None
    where: list[sql.Composable] = [sql.SQL("true")]
    params: list[Any] = []
    if cfg is not None:
        where.append(sql.SQL("table_name = %s"))
        params.append(cfg.database.table)
    if rehearse is not None:
        where.append(sql.SQL("rehearsal = %s"))
        params.append(rehearse)
    q = sql.SQL("SELECT {cols} FROM swarm.migrations m WHERE {w} ORDER BY id DESC LIMIT 1").format(
        cols=sql.SQL(_COLUMNS), w=sql.SQL(" AND ").join(where)
    )
    r = conn.execute(q, params).fetchone()
    return _from_row(r) if r else None


def set_state(
    conn: psycopg.Connection,
    mid: int,
    state: str,
    *,
    phase: str | None = None,
    reason: str | None = None,
    clear_reason: bool = False,
) -> None:
    """Record a state (and phase, and why); ``clear_reason`` forgets the last reason (a paused migration that
    runs again)."""
    conn.execute(
        "UPDATE swarm.migrations SET state = %s, phase = coalesce(%s, phase), "
        "reason = CASE WHEN %s::boolean THEN %s::text ELSE coalesce(%s::text, reason) END, "
        "started_at = CASE WHEN %s = 'running' THEN coalesce(started_at, now()) ELSE started_at END, "
        "finished_at = CASE WHEN %s IN ('completed', 'rolled_back', 'failed') THEN now() ELSE NULL END, "
        "updated_at = now() WHERE id = %s",
        [state, phase, clear_reason, reason, reason, state, state, mid],
    )
    event(conn, mid, "state", state=state, phase=phase, reason=reason)


def event(conn: psycopg.Connection, mid: int | None, kind: str, **detail: Any) -> None:
    conn.execute(
        "INSERT INTO swarm.events (migration_id, kind, detail) VALUES (%s, %s, %s)",
        [mid, kind, json.dumps({k: v for k, v in detail.items() if v is not None}, default=str)],
    )
