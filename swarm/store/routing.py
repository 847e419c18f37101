"""Routing in SQL: the caller's bucket, the share, and ``swarm.arm(table, caller)`` for applications with their
own SQL.

There is one implementation of each rule, and the Python router uses the same ones:

* **The share** is :sql:`swarm.share(table regclass)`: the newest non-rehearsal migration of the table; its
  ``rollout_percent`` when its new column may serve (state ``validating`` or ``completed`` and phase
  ``validate``, ``rollout``, ``done`` or ``decommissioned``), else 0. :meth:`Router.share` reads it with the same
  function, so the two cannot disagree about the share.
* **The bucket** of a caller key is the first 8 bytes of SHA-256 of its UTF-8 bytes, as an unsigned big-endian
  integer ``h``, mapped to ``floor(h * 10000 / 2**64)`` in [0, 10000): the share in hundredths of a percent. It
  is exact integer arithmetic on both sides (Python ``int``, SQL ``numeric``), so Python's
  :func:`swarm.serving.router.bucket` and :sql:`swarm.bucket(text)` agree on every key, not only nearly; a
  caller goes to the new column when its bucket is below ``round(percent * 100)``.
* **The kill switch**: ``USE_NOMIC_EMBEDDINGS=false`` lives in a process's environment, which SQL cannot see.
  Its database twin is the row ``use_new_embeddings`` of ``swarm.settings`` (``python -m swarm rollout
  --use-new false`` writes it); ``swarm.arm`` and every router honour it. A router also honours its own
  environment (``rollout.use_new``).

All of it is created idempotently with the bookkeeping schema (:func:`swarm.store.schema.init_schema`).
"""

from __future__ import annotations

from typing import Any

import psycopg

from swarm.store.db import one

#: Bumped when the functions below change, so a router re-creates them on a database made by an older swarm.
VERSION = "2"

SERVABLE_STATES = ("validating", "completed")
SERVABLE_PHASES = ("validate", "rollout", "done", "decommissioned")
USE_NEW = "use_new_embeddings"

_STATES = ", ".join(f"'{s}'" for s in SERVABLE_STATES)
_PHASES = ", ".join(f"'{p}'" for p in SERVABLE_PHASES)

DDL = [
    """CREATE TABLE IF NOT EXISTS swarm.settings (
        name        text PRIMARY KEY,
        value       text NOT NULL,
        reason      text,
        updated_at  timestamptz NOT NULL DEFAULT now()
    )""",
    # The table a migration names, as the regclass text to_regclass() parses: each part quoted only if needed,
    # as swarm.store.sql.regclass_text does for the Python side.
    """CREATE OR REPLACE FUNCTION swarm.table_regclass(table_name text) RETURNS regclass
    LANGUAGE sql STABLE PARALLEL SAFE AS $$
        SELECT to_regclass(CASE WHEN strpos(table_name, '.') > 0
            THEN quote_ident(split_part(table_name, '.', 1)) || '.'
                 || quote_ident(substr(table_name, strpos(table_name, '.') + 1))
            ELSE quote_ident(table_name) END)
    $$""",
    """CREATE OR REPLACE FUNCTION swarm.bucket(caller text) RETURNS int
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
        SELECT div((CASE WHEN h < 0 THEN h::numeric + 18446744073709551616 ELSE h::numeric END) * 10000,
                   18446744073709551616)::int
        FROM (SELECT ('x' || encode(substr(sha256(convert_to(caller, 'UTF8')), 1, 8), 'hex'))::bit(64)::bigint
              AS h) s
    $$""",
    f"""CREATE OR REPLACE FUNCTION swarm.share(tbl regclass)
    RETURNS TABLE (migration_id bigint, state text, phase text, percent real, threshold int, use_new boolean,
                   legacy_column text, new_column text, column_type text, dimension int)
    LANGUAGE sql STABLE AS $$
        SELECT m.id, m.state, m.phase,
               CASE WHEN m.state IN ({_STATES}) AND m.phase IN ({_PHASES}) THEN m.rollout_percent ELSE 0 END,
               CASE WHEN m.state IN ({_STATES}) AND m.phase IN ({_PHASES})
                    THEN round(m.rollout_percent::float8 * 100)::int ELSE 0 END,
               coalesce((SELECT s.value FROM swarm.settings s WHERE s.name = '{USE_NEW}'), 'true')::boolean,
               m.legacy_column, m.new_column, m.column_type, m.dimension
        FROM swarm.migrations m
        WHERE NOT m.rehearsal AND swarm.table_regclass(m.table_name) = tbl
        ORDER BY m.id DESC
        LIMIT 1
    $$""",
    # A caller without a key (NULL) gets a random bucket, as the router gives it a random key.
    """CREATE OR REPLACE FUNCTION swarm.arm(tbl regclass, caller text)
    RETURNS TABLE (arm text, column_name text, dimension int, migration_id bigint, percent real)
    LANGUAGE sql VOLATILE AS $$
        SELECT a.arm,
               CASE WHEN a.arm = 'new' THEN s.new_column ELSE s.legacy_column END,
               CASE WHEN a.arm = 'new' THEN s.dimension ELSE (
                   SELECT nullif(t.atttypmod, -1) FROM pg_attribute t
                   WHERE t.attrelid = tbl AND t.attname = s.legacy_column AND NOT t.attisdropped) END,
               s.migration_id, coalesce(s.percent, 0)
        FROM (SELECT 1) one
        LEFT JOIN swarm.share(tbl) s ON true
        CROSS JOIN LATERAL (SELECT CASE
            WHEN s.migration_id IS NULL THEN 'legacy'
            WHEN s.phase = 'decommissioned' THEN 'new'
            WHEN s.use_new AND coalesce(swarm.bucket(caller), floor(random() * 10000)::int) < s.threshold
                THEN 'new'
            ELSE 'legacy' END AS arm) a
    $$""",
    "COMMENT ON FUNCTION swarm.arm(regclass, text) IS "
    "'swarm: the arm (legacy or new) and the column a caller''s search goes to, by the rollout share'",
]


MARK_INSTALLED = (
    "INSERT INTO swarm.settings (name, value) VALUES ('schema.routing', '"
    + VERSION
    + "') ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = now()"
)


HAS_SETTINGS = "SELECT to_regclass('swarm.settings') IS NOT NULL"
VERSION_ROW = "SELECT value FROM swarm.settings WHERE name = 'schema.routing'"


def installed(conn: psycopg.Connection) -> bool:
    """Whether this database has the routing functions of this version."""
    if not one(conn.execute(HAS_SETTINGS).fetchone(), "whether swarm.settings exists")[0]:
        return False
    row = conn.execute(VERSION_ROW).fetchone()
    return row is not None and row[0] == VERSION


async def ainstalled(conn: psycopg.AsyncConnection) -> bool:
    if not one(await (await conn.execute(HAS_SETTINGS)).fetchone(), "whether swarm.settings exists")[0]:
        return False
    row = await (await conn.execute(VERSION_ROW)).fetchone()
    return row is not None and row[0] == VERSION


#: :sql:`swarm.share` of a table (param: its regclass text, as :func:`swarm.store.sql.regclass_text` gives it).
SHARE = "SELECT * FROM swarm.share(to_regclass(%s))"
#: The kill switch's row (param: :data:`USE_NEW`).
FLAG = "SELECT value FROM swarm.settings WHERE name = %s"


def read_share(conn: psycopg.Connection, regclass_text: str) -> dict[str, Any] | None:
    """:sql:`swarm.share` of a table as a dict (None: no migration of it)."""
    cur = conn.execute(SHARE, [regclass_text])
    row = cur.fetchone()
    if row is None:
        return None
    return dict(zip([d.name for d in cur.description or ()], row, strict=True))


def set_use_new(conn: psycopg.Connection, on: bool, *, reason: str | None = None) -> bool | None:
    """Write the kill switch (``swarm.settings.use_new_embeddings``); returns the previous value (None: unset,
    which means on)."""
    with conn.transaction():
        prev = conn.execute("SELECT value FROM swarm.settings WHERE name = %s FOR UPDATE", [USE_NEW]).fetchone()
        conn.execute(
            "INSERT INTO swarm.settings (name, value, reason) VALUES (%s, %s, %s) "
            "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, reason = EXCLUDED.reason, updated_at = now()",
            [USE_NEW, "true" if on else "false", reason],
        )
    return None if prev is None else prev[0] == "true"


def use_new(conn: psycopg.Connection) -> bool:
    """The kill switch as the database holds it (unset: on)."""
    if one(conn.execute("SELECT to_regclass('swarm.settings')").fetchone(), "to_regclass('swarm.settings')")[0] is None:
        return True
    row = conn.execute("SELECT value FROM swarm.settings WHERE name = %s", [USE_NEW]).fetchone()
    return row is None or row[0] == "true"
