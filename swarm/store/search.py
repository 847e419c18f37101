"""One search on a vector column, with the ANN settings it runs under, or exact.

The router, the validators and the benchmark all search through :func:`run_search`, so the settings that make a
figure are the settings that serve the application. Validation also searches exactly (``exact=True``: the
planner may not use any index in that search's transaction, so pgvector scans every row and sorts by distance)
to tell the models apart from their indexes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from swarm.store.sql import Target, regclass_text, split_table

if TYPE_CHECKING:
    from swarm.core.config import Config


@dataclass(frozen=True)
class AnnSettings:
    """How a search uses the ANN index of the new column: ``[swarm].ef_search`` and ``[swarm].probes``.

    pgvector's defaults (``hnsw.ef_search = 40``, ``ivfflat.probes = 1``) give recall@10 of about 0.84 and 0.14
    on 100k MiniLM-like vectors; the config's defaults are the measured choice (``swarm bench --only search``,
    bench/README.md).
    """

    ef_search: int
    probes: int

    @classmethod
    def of(cls, cfg: Config) -> AnnSettings:
        return cls(cfg.swarm.ef_search, cfg.swarm.probes)

    @classmethod
    def for_legacy(cls, cfg: Config, conn: psycopg.Connection) -> AnnSettings:
        """How the application searches the legacy column: ``[legacy].ef_search`` / ``[legacy].probes``, each
        None read from the server (the session default an application connection gets)."""
        server = server_settings(conn)
        return cls(cfg.legacy.ef_search or server.ef_search, cfg.legacy.probes or server.probes)

    def as_dict(self) -> dict[str, int]:
        return {"ef_search": self.ef_search, "probes": self.probes}

    def params(self, k: int) -> list[str]:
        # An hnsw scan returns at most ef_search rows: never fewer than the k asked for.
        return [str(max(self.ef_search, int(k))), str(self.probes)]


#: pgvector's defaults, for a server whose session has no setting of its own.
PGVECTOR_DEFAULTS = AnnSettings(ef_search=40, probes=1)

_SERVER_SETTINGS = sql.SQL(
    # The cast loads pgvector into this backend first, so its settings are registered (and their defaults
    # known); missing_ok then only covers a server without them.
    "SELECT '[1]'::vector IS NOT NULL, current_setting('hnsw.ef_search', true), current_setting('ivfflat.probes', true)"
)

#: Planner settings of an exact search: no index of any kind may serve it (sequential scan, then sort), even in
#: a session whose own default turned sequential scans off.
_EXACT = sql.SQL(
    "SELECT set_config('enable_indexscan', 'off', true), set_config('enable_indexonlyscan', 'off', true), "
    "set_config('enable_bitmapscan', 'off', true), set_config('enable_seqscan', 'on', true)"
)

_COLUMN_INDEXES = sql.SQL(
    "SELECT c.relname, am.amname, coalesce(array_to_string(c.reloptions, ', '), '') FROM pg_index i "
    "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam "
    "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
    "WHERE i.indrelid = to_regclass(%s) AND a.attname = %s AND i.indisvalid ORDER BY 1"
)


def server_settings(conn: psycopg.Connection) -> AnnSettings:
    """``hnsw.ef_search`` and ``ivfflat.probes`` as a new session on this server gets them."""
    row = conn.execute(_SERVER_SETTINGS).fetchone()
    _, ef, probes = row if row else (None, None, None)
    return AnnSettings(
        int(ef) if ef else PGVECTOR_DEFAULTS.ef_search, int(probes) if probes else PGVECTOR_DEFAULTS.probes
    )


def column_indexes(conn: psycopg.Connection, table: str, column: str) -> list[dict[str, str]]:
    """The valid indexes on one column of ``table`` (``schema.table`` as in config): name, method, options."""
    schema, name = split_table(table)
    rows = conn.execute(_COLUMN_INDEXES, [regclass_text(schema, name), column]).fetchall()
    return [{"name": r[0], "method": r[1], "options": r[2]} for r in rows]


def run_search(
    conn: psycopg.Connection,
    query: sql.Composable,
    vec: Any,
    k: int,
    ann: AnnSettings | None,
    *,
    exact: bool = False,
) -> list[tuple[Any, ...]]:
    """One search (``Target.search``/``search_sql``); with ``ann``, its settings are ``SET LOCAL`` in the
    search's own transaction, so they reach this search only; with ``exact``, that transaction may use no index
    (an exact scan, whatever indexes the column has). The router, the validators and ``swarm bench`` all search
    through here."""
    if ann is None and not exact:
        return conn.execute(query, [vec, vec, int(k)]).fetchall()
    with conn.transaction():
        if exact:
            conn.execute(_EXACT)
        if ann is not None:
            conn.execute(Target.search_settings(), ann.params(k))
        return conn.execute(query, [vec, vec, int(k)]).fetchall()
