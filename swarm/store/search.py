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
from psycopg.sql import Composed

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
    def of(cls, cfg: Config, *, rerank: int | None = None) -> AnnSettings:
        """The config's settings; with ``rerank`` (an hnsw-bq search), ``ef_search`` raised to it, since an hnsw
        scan returns at most ``ef_search`` candidates."""
        return cls(max(cfg.swarm.ef_search, rerank or 0), cfg.swarm.probes)

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
    query: sql.Composed,
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


# ------------------------------------------------------------------------------------------------------------
# Searches with filters and the row's columns (the application's API)
# ------------------------------------------------------------------------------------------------------------
#: The first pgvector with iterative index scans (``hnsw.iterative_scan``, ``ivfflat.iterative_scan``).
ITERATIVE_SCAN = (0, 8)
Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class SearchQuery:
    """A k-nearest search with ``WHERE column = value`` filters and extra output columns.

    ``sql`` takes ``params(vec, k)``: the query vector, the filter values in order, the vector again, k.
    Output columns: the key as text, the distance, then ``columns`` in order.
    """

    sql: Composed  # a field named ``sql``: in this class body the name no longer means the module
    exact_sql: Composed
    filters: tuple[Any, ...] = ()
    columns: tuple[str, ...] = ()
    filtered: bool = False

    def params(self, vec: Any, k: int) -> list[Any]:
        return [vec, *self.filters, vec, int(k)]

    def exact_params(self, vec: Any, k: int) -> list[Any]:
        return [vec, *self.filters, int(k)]


def build_search(
    target: Target,
    column: str,
    column_type: str,
    dim: int,
    *,
    where: dict[str, Scalar | list[Scalar] | tuple[Scalar, ...]] | None = None,
    columns: tuple[str, ...] = (),
    types: dict[str, str],
    require: str | None = None,
    rerank: int | None = None,
) -> SearchQuery:
    """The search of :meth:`Target.search` with filters and columns of the table.

    ``types`` maps the table's columns to their types as the server's catalog names them (``format_type``);
    every name in ``where`` and ``columns`` must be among them (the caller checks and says which is not), so
    identifiers come from the catalog and each value goes as a parameter cast to its column's type. A value
    ``None`` is ``IS NULL``, a list or tuple is ``= ANY``. With ``rerank`` (an ``hnsw-bq`` index), the
    ``rerank`` nearest by Hamming distance of the binary quantizations, re-ranked by exact distance, as
    :meth:`Target.search` does.
    """
    parts: list[sql.Composable] = [sql.SQL("{c} IS NOT NULL").format(c=sql.Identifier(column))]
    if require:
        parts.append(sql.SQL("{} IS NOT NULL").format(sql.Identifier(require)))
    values: list[Any] = []
    for name, value in (where or {}).items():
        ident, ty = sql.Identifier(name), sql.SQL(types[name])  # the type is the catalog's, never user text
        if value is None:
            parts.append(sql.SQL("{} IS NULL").format(ident))
        elif isinstance(value, (list, tuple)):
            parts.append(sql.SQL("{} = ANY(CAST(%s AS {}[]))").format(ident, ty))
            values.append([_text(v) for v in value])
        else:
            parts.append(sql.SQL("{} = CAST(%s AS {})").format(ident, ty))
            values.append(_text(value))
    extra = sql.SQL("").join(sql.SQL(", {}").format(sql.Identifier(c)) for c in columns)
    names = {
        "id": target.id,
        "col": sql.Identifier(column),
        "ty": sql.SQL(column_type),
        "dim": sql.Literal(int(dim)),
        "extra": extra,
        "t": target.t,
        "w": sql.SQL(" AND ").join(parts),
    }
    if rerank:
        q = sql.SQL(
            "SELECT * FROM (SELECT {id}::text AS swarm_key, {col} <=> CAST(%s AS {ty}({dim})) AS swarm_distance"
            "{extra} FROM {t} WHERE {w} ORDER BY binary_quantize({col})::bit({dim}) <~> "
            "binary_quantize(CAST(%s AS {ty}({dim}))) LIMIT {rerank}) swarm_rows ORDER BY swarm_distance LIMIT %s"
        ).format(rerank=sql.Literal(int(rerank)), **names)
    else:
        q = sql.SQL(
            "SELECT {id}::text AS swarm_key, {col} <=> CAST(%s AS {ty}({dim})) AS swarm_distance{extra} FROM {t} "
            "WHERE {w} ORDER BY {col} <=> CAST(%s AS {ty}({dim})) LIMIT %s"
        ).format(**names)
    # The same rows by exact distance: OFFSET 0 keeps ORDER BY/LIMIT out of the scan, so no ANN index can serve
    # it (whatever the planner settings); a b-tree on the filter still can.
    exact = sql.SQL(
        "SELECT * FROM (SELECT {id}::text AS swarm_key, {col} <=> CAST(%s AS {ty}({dim})) AS swarm_distance{extra} "
        "FROM {t} WHERE {w} OFFSET 0) swarm_rows ORDER BY swarm_distance LIMIT %s"
    ).format(**names)
    return SearchQuery(q, exact, tuple(values), tuple(columns), bool(where))


def _text(v: Scalar) -> str | None:
    # Sent as text and cast by the server to the column's type: '42' to bigint, 'true' to boolean, ...
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _settings(ann: AnnSettings | None, k: int, iterative: bool) -> list[tuple[sql.SQL, list[str]]]:
    out: list[tuple[sql.SQL, list[str]]] = []
    if ann is not None:
        out.append((Target.search_settings(), ann.params(k)))
    if iterative:
        # pgvector >= 0.8: keep scanning the index until k rows pass the filter (relaxed order: re-sorted below).
        out.append(
            (
                sql.SQL(
                    "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true), "
                    "set_config('ivfflat.iterative_scan', 'relaxed_order', true)"
                ),
                [],
            )
        )
    return out


def run_query(
    conn: psycopg.Connection, q: SearchQuery, vec: Any, k: int, ann: AnnSettings | None, *, iterative: bool
) -> tuple[list[tuple[Any, ...]], bool]:
    """Run a :class:`SearchQuery` in its own transaction with its settings ``SET LOCAL``. Returns (rows sorted
    by distance, exact) where ``exact`` says the ANN scan gave fewer than k rows under a filter and the search
    was repeated exactly, so a filtered search returns k rows whenever k rows match."""
    with conn.transaction():
        for stmt, params in _settings(ann, k, iterative):
            conn.execute(stmt, params)
        rows = conn.execute(q.sql, q.params(vec, k)).fetchall()
        exact = False
        if q.filtered and len(rows) < k:
            rows = conn.execute(q.exact_sql, q.exact_params(vec, k)).fetchall()
            exact = True
    return sorted(rows, key=lambda r: r[1]), exact


async def arun_query(
    conn: psycopg.AsyncConnection, q: SearchQuery, vec: Any, k: int, ann: AnnSettings | None, *, iterative: bool
) -> tuple[list[tuple[Any, ...]], bool]:
    """The async twin of :func:`run_query`."""
    async with conn.transaction():
        for stmt, params in _settings(ann, k, iterative):
            await conn.execute(stmt, params)
        rows = await (await conn.execute(q.sql, q.params(vec, k))).fetchall()
        exact = False
        if q.filtered and len(rows) < k:
            rows = await (await conn.execute(q.exact_sql, q.exact_params(vec, k))).fetchall()
            exact = True
    return sorted(rows, key=lambda r: r[1]), exact


def table_columns(conn: psycopg.Connection, regclass_text: str) -> dict[str, str]:
    """The table's columns and their types (``format_type``), from the catalog."""
    return dict(
        conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            [regclass_text],
        ).fetchall()
    )


def pgvector_version(conn: psycopg.Connection) -> str | None:
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    return row[0] if row else None
