"""All of swarm's SQL, built with :mod:`psycopg.sql`.

Every identifier that comes from configuration (schema, table, columns) goes through ``sql.Identifier``; values
go as parameters. The only text spliced into statements that is not an Identifier is a type name read from the
server's own catalog (``format_type``) and integer dimensions validated by pydantic.

Concurrency, in one place:

* The legacy column is never written. The new column is written only by ``UPDATE ... FROM`` a staging table,
  joined on the primary key **and on md5 of the content the vector was computed from**. If the application
  changed a row's content after a migrator read it, the join misses that row and the stale vector is never
  written; the change itself was queued by the trigger below and is embedded again from the new content.
* The sync trigger (``BEFORE INSERT OR UPDATE OF content``) sets the new column to NULL when the content changes
  (unless the application wrote the new column itself) and appends the row id to ``swarm.changes``. So a vector
  in the new column always belongs to the row's current content: "no stale vectors" holds at every commit, not
  only at the end.
* A batch's vectors and its shard checkpoint commit in one transaction. The checkpoint UPDATE is fenced by the
  shard's ``attempt``: a migrator that was presumed dead and whose shard was handed to another cannot commit.
* Queue entries are claimed with ``FOR UPDATE SKIP LOCKED`` (pgai's vectorizer queue pattern) and deleted in the
  transaction that writes their vectors; a row changed again meanwhile has a newer queue entry.
* DDL runs under a short ``lock_timeout`` and is retried (pgroll's habit), so a schema change waiting for a lock
  never queues the application's queries behind it for longer than that.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

SCHEMA = "swarm"

BOOKKEEPING = [
    "CREATE SCHEMA IF NOT EXISTS swarm",
    """CREATE TABLE IF NOT EXISTS swarm.migrations (
        id            bigserial PRIMARY KEY,
        name          text NOT NULL,
        state         text NOT NULL DEFAULT 'planned',
        table_name    text NOT NULL,
        id_column     text NOT NULL,
        key_type      text NOT NULL,
        content_column text NOT NULL,
        legacy_column text NOT NULL,
        new_column    text NOT NULL,
        column_type   text NOT NULL,
        dimension     int NOT NULL,
        model_id      text NOT NULL,
        model_sha256  text NOT NULL,
        config        jsonb NOT NULL,
        rows_total    bigint NOT NULL DEFAULT 0,
        rollout_percent real NOT NULL DEFAULT 0,
        index_name    text,
        legacy_checksum text,
        rehearsal     boolean NOT NULL DEFAULT false,
        reason        text,
        created_at    timestamptz NOT NULL DEFAULT now(),
        started_at    timestamptz,
        finished_at   timestamptz,
        updated_at    timestamptz NOT NULL DEFAULT now()
    )""",
    """CREATE TABLE IF NOT EXISTS swarm.shards (
        migration_id  bigint NOT NULL REFERENCES swarm.migrations(id) ON DELETE CASCADE,
        shard_id      int NOT NULL,
        lo            text,
        hi            text,
        rows_planned  bigint NOT NULL DEFAULT 0,
        state         text NOT NULL DEFAULT 'pending',
        last_key      text,
        rows_done     bigint NOT NULL DEFAULT 0,
        rows_failed   bigint NOT NULL DEFAULT 0,
        worker        text,
        attempt       int NOT NULL DEFAULT 0,
        error         text,
        started_at    timestamptz,
        finished_at   timestamptz,
        updated_at    timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (migration_id, shard_id)
    )""",
    """CREATE TABLE IF NOT EXISTS swarm.dead_letters (
        migration_id  bigint NOT NULL REFERENCES swarm.migrations(id) ON DELETE CASCADE,
        row_id        text NOT NULL,
        reason        text NOT NULL,
        content_md5   text,
        at            timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (migration_id, row_id)
    )""",
    """CREATE TABLE IF NOT EXISTS swarm.changes (
        seq           bigserial PRIMARY KEY,
        migration_id  bigint NOT NULL,
        row_id        text NOT NULL,
        at            timestamptz NOT NULL DEFAULT now()
    )""",
    "CREATE INDEX IF NOT EXISTS changes_migration ON swarm.changes (migration_id, seq)",
    """CREATE TABLE IF NOT EXISTS swarm.batches (
        migration_id  bigint NOT NULL,
        shard_id      int,
        worker        text,
        rows          int NOT NULL,
        tokens        int NOT NULL DEFAULT 0,
        truncated     int NOT NULL DEFAULT 0,
        embed_seconds real NOT NULL DEFAULT 0,
        seconds       real NOT NULL DEFAULT 0,
        at            timestamptz NOT NULL DEFAULT now()
    )""",
    "CREATE INDEX IF NOT EXISTS batches_migration ON swarm.batches (migration_id, at)",
    # Added after the first release: bookkeeping made by an older swarm gets the column too.
    "ALTER TABLE swarm.batches ADD COLUMN IF NOT EXISTS truncated int NOT NULL DEFAULT 0",
    """CREATE TABLE IF NOT EXISTS swarm.agents (
        name          text PRIMARY KEY,
        kind          text NOT NULL,
        node          text,
        pid           int,
        model_id      text,
        rss_mb        real,
        model_mb      real,
        state         text,
        started_at    timestamptz NOT NULL DEFAULT now(),
        seen_at       timestamptz NOT NULL DEFAULT now()
    )""",
    """CREATE TABLE IF NOT EXISTS swarm.events (
        id            bigserial PRIMARY KEY,
        migration_id  bigint,
        kind          text NOT NULL,
        detail        jsonb NOT NULL DEFAULT '{}'::jsonb,
        at            timestamptz NOT NULL DEFAULT now()
    )""",
]


def split_table(name: str) -> tuple[str | None, str]:
    """``"schema.table"`` -> ("schema", "table"); ``"table"`` -> (None, "table")."""
    if "." in name:
        schema, table = name.split(".", 1)
        return schema, table
    return None, name


def regclass_text(schema: str | None, table: str) -> str:
    """The text ``to_regclass`` parses for ``schema.table``: each part quoted, so mixed case survives."""
    q = lambda s: '"' + s.replace('"', '""') + '"'  # noqa: E731
    return f"{q(schema)}.{q(table)}" if schema else q(table)


def table_ident(name: str) -> sql.Identifier:
    schema, table = split_table(name)
    return sql.Identifier(schema, table) if schema else sql.Identifier(table)


@dataclass(frozen=True)
class Target:
    """The table being migrated, as identifiers, plus the key type read from the catalog."""

    table: str
    id_column: str
    content_column: str
    legacy_column: str
    new_column: str
    key_type: str = "bigint"

    # -- identifiers ---------------------------------------------------------------------------------------
    @property
    def t(self) -> sql.Identifier:
        return table_ident(self.table)

    @property
    def id(self) -> sql.Identifier:
        return sql.Identifier(self.id_column)

    @property
    def content(self) -> sql.Identifier:
        return sql.Identifier(self.content_column)

    @property
    def legacy(self) -> sql.Identifier:
        return sql.Identifier(self.legacy_column)

    @property
    def new(self) -> sql.Identifier:
        return sql.Identifier(self.new_column)

    @property
    def ktype(self) -> sql.SQL:
        # From format_type() in the server's catalog, never from user input.
        return sql.SQL(self.key_type)

    def trigger_name(self, migration_id: int) -> sql.Identifier:
        return sql.Identifier(f"swarm_sync_{migration_id}")

    def function_name(self, migration_id: int) -> sql.Identifier:
        return sql.Identifier(SCHEMA, f"sync_{migration_id}")

    # -- catalog -------------------------------------------------------------------------------------------
    @staticmethod
    def regclass_query() -> sql.SQL:
        return sql.SQL("SELECT to_regclass(%s)")

    # -- DDL (expand) --------------------------------------------------------------------------------------
    def add_column(self, column_type: str, dim: int) -> sql.Composed:
        return sql.SQL("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {new} {ty}({dim})").format(
            t=self.t, new=self.new, ty=sql.SQL(column_type), dim=sql.Literal(int(dim))
        )

    def drop_column(self, column: str | None = None) -> sql.Composed:
        col = sql.Identifier(column) if column else self.new
        return sql.SQL("ALTER TABLE {t} DROP COLUMN IF EXISTS {c}").format(t=self.t, c=col)

    def create_sync_function(self, migration_id: int) -> sql.Composed:
        # The body is passed as a quoted string literal, not dollar-quoted: a name that holds the dollar-quote
        # tag (legal in PostgreSQL) would otherwise end the body early and turn the rest of itself into SQL.
        body = sql.SQL(
            """
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.{new} IS NULL THEN
            INSERT INTO swarm.changes (migration_id, row_id) VALUES ({mid}, NEW.{id}::text);
        END IF;
    ELSIF NEW.{content} IS DISTINCT FROM OLD.{content}
          AND NEW.{new} IS NOT DISTINCT FROM OLD.{new} THEN
        NEW.{new} := NULL;
        INSERT INTO swarm.changes (migration_id, row_id) VALUES ({mid}, NEW.{id}::text);
    END IF;
    RETURN NEW;
END
"""
        ).format(
            new=self.new,
            id=self.id,
            content=self.content,
            mid=sql.Literal(int(migration_id)),
        )
        return sql.SQL("CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS {body}").format(
            fn=self.function_name(migration_id), body=sql.Literal(body.as_string(None))
        )

    def create_sync_trigger(self, migration_id: int) -> sql.Composed:
        return sql.SQL(
            "CREATE OR REPLACE TRIGGER {trg} BEFORE INSERT OR UPDATE OF {content} ON {t} "
            "FOR EACH ROW EXECUTE FUNCTION {fn}()"
        ).format(
            trg=self.trigger_name(migration_id),
            content=self.content,
            t=self.t,
            fn=self.function_name(migration_id),
        )

    def drop_sync(self, migration_id: int) -> list[sql.Composed]:
        return [
            sql.SQL("DROP TRIGGER IF EXISTS {trg} ON {t}").format(trg=self.trigger_name(migration_id), t=self.t),
            sql.SQL("DROP FUNCTION IF EXISTS {fn}()").format(fn=self.function_name(migration_id)),
        ]

    # -- the guard: what keeps a kept column honest when no migration follows the table ------------------
    def guard_name(self, migration_id: int) -> sql.Identifier:
        return sql.Identifier(f"swarm_guard_{migration_id}")

    def guard_function(self, migration_id: int) -> sql.Identifier:
        return sql.Identifier(SCHEMA, f"guard_{migration_id}")

    def create_guard(self, migration_id: int) -> list[sql.Composed]:
        """A trigger that only NULLs the new vector of a row whose content changes (no queue): installed when a
        migration ends but its column stays (``rollback --keep-data``, a failed migration), so a vector in the
        column still always belongs to its row's current content. The next plan of the column replaces it with
        its sync trigger and backfills exactly the rows it nulled."""
        body = sql.SQL(
            """
BEGIN
    IF NEW.{content} IS DISTINCT FROM OLD.{content} AND NEW.{new} IS NOT DISTINCT FROM OLD.{new} THEN
        NEW.{new} := NULL;
    END IF;
    RETURN NEW;
END
"""
        ).format(new=self.new, content=self.content)
        return [
            sql.SQL("CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS {body}").format(
                fn=self.guard_function(migration_id), body=sql.Literal(body.as_string(None))
            ),
            sql.SQL(
                "CREATE OR REPLACE TRIGGER {trg} BEFORE UPDATE OF {content} ON {t} FOR EACH ROW EXECUTE FUNCTION {fn}()"
            ).format(
                trg=self.guard_name(migration_id),
                content=self.content,
                t=self.t,
                fn=self.guard_function(migration_id),
            ),
        ]

    def drop_guard(self, migration_id: int) -> list[sql.Composed]:
        return [
            sql.SQL("DROP TRIGGER IF EXISTS {trg} ON {t}").format(trg=self.guard_name(migration_id), t=self.t),
            sql.SQL("DROP FUNCTION IF EXISTS {fn}()").format(fn=self.guard_function(migration_id)),
        ]

    @staticmethod
    def swarm_triggers() -> sql.SQL:
        """The swarm triggers on a table (param: its regclass text): ``swarm_sync_<mid>`` and ``swarm_guard_<mid>``."""
        return sql.SQL(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND NOT tgisinternal "
            "AND (tgname LIKE 'swarm\\_sync\\_%%' OR tgname LIKE 'swarm\\_guard\\_%%') ORDER BY tgname"
        )

    # -- the legacy column's baseline: proof that swarm never wrote it ------------------------------------
    @staticmethod
    def baseline_table(migration_id: int) -> sql.Identifier:
        return sql.Identifier(SCHEMA, f"baseline_{migration_id}")

    def _vector_hash(self, column: sql.Composable, vector_type: str) -> sql.Composed:
        # 64 bits of md5 over the vector's binary form (its type's send function): no text formatting of the
        # floats, which would cost more than the rest of the scan.
        return sql.SQL("('x' || left(md5({send}({c})), 16))::bit(64)::bigint").format(
            send=sql.Identifier(f"{vector_type}_send"), c=column
        )

    def create_baseline(self, migration_id: int, legacy_type: str) -> list[sql.Composed]:
        """Per row at plan time: the key, a hash of the content and one of the legacy vector (UNLOGGED: it is a
        proof, rebuilt by nothing; ~40 bytes a row). One streaming scan, no lock beyond the scan's."""
        b = self.baseline_table(migration_id)
        return [
            sql.SQL("DROP TABLE IF EXISTS {b}").format(b=b),
            sql.SQL(
                "CREATE UNLOGGED TABLE {b} AS SELECT {id} AS k, hashtextextended({content}, 0) AS content_h, "
                "{legacy_h} AS legacy_h FROM {t}"
            ).format(
                b=b, id=self.id, content=self.content, legacy_h=self._vector_hash(self.legacy, legacy_type), t=self.t
            ),
            sql.SQL("ALTER TABLE {b} ADD PRIMARY KEY (k)").format(b=b),
        ]

    def verify_baseline(self, migration_id: int, legacy_type: str) -> sql.Composed:
        """Each row now against its baseline: (unchanged, legacy changed while the content did not, content changed
        by the application, deleted, inserted). swarm never writes the legacy column, so the second count is the
        one that must be 0."""
        return sql.SQL(
            "SELECT count(*) FILTER (WHERE b.k IS NOT NULL AND t.k IS NOT NULL AND b.content_h IS NOT DISTINCT FROM "
            "t.content_h AND b.legacy_h IS NOT DISTINCT FROM t.legacy_h), "
            "count(*) FILTER (WHERE b.k IS NOT NULL AND t.k IS NOT NULL AND b.content_h IS NOT DISTINCT FROM "
            "t.content_h AND b.legacy_h IS DISTINCT FROM t.legacy_h), "
            "count(*) FILTER (WHERE b.k IS NOT NULL AND t.k IS NOT NULL AND b.content_h IS DISTINCT FROM t.content_h), "
            "count(*) FILTER (WHERE t.k IS NULL), count(*) FILTER (WHERE b.k IS NULL) "
            "FROM {b} b FULL JOIN (SELECT {id} AS k, hashtextextended({content}, 0) AS content_h, "
            "{legacy_h} AS legacy_h FROM {t}) t ON t.k = b.k"
        ).format(
            b=self.baseline_table(migration_id),
            id=self.id,
            content=self.content,
            legacy_h=self._vector_hash(self.legacy, legacy_type),
            t=self.t,
        )

    def drop_baseline(self, migration_id: int) -> sql.Composed:
        return sql.SQL("DROP TABLE IF EXISTS {b}").format(b=self.baseline_table(migration_id))

    # -- decommission: the legacy column archived while the application writes ---------------------------
    def archive_capture(self, migration_id: int, archive: Target) -> list[sql.Composed]:
        """A trigger that keeps the archive equal to the legacy column while it is copied in batches: every
        write of the legacy column (and every delete, as a tombstone) reaches the archive in the application's
        own transaction. Dropped by the DDL that drops the column."""
        fn = sql.Identifier(SCHEMA, f"archive_{migration_id}")
        body = sql.SQL(
            """
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO {a} ({id}, {legacy}, swarm_deleted) VALUES (OLD.{id}, NULL, true)
        ON CONFLICT ({id}) DO UPDATE SET {legacy} = NULL, swarm_deleted = true;
        RETURN OLD;
    END IF;
    INSERT INTO {a} ({id}, {legacy}) VALUES (NEW.{id}, NEW.{legacy})
    ON CONFLICT ({id}) DO UPDATE SET {legacy} = EXCLUDED.{legacy}, swarm_deleted = false;
    RETURN NEW;
END
"""
        ).format(a=archive.t, id=self.id, legacy=self.legacy)
        return [
            sql.SQL("CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS {body}").format(
                fn=fn, body=sql.Literal(body.as_string(None))
            ),
            sql.SQL(
                "CREATE OR REPLACE TRIGGER {trg} AFTER INSERT OR UPDATE OF {legacy} OR DELETE ON {t} "
                "FOR EACH ROW EXECUTE FUNCTION {fn}()"
            ).format(trg=sql.Identifier(f"swarm_archive_{migration_id}"), legacy=self.legacy, t=self.t, fn=fn),
        ]

    def drop_archive_capture(self, migration_id: int) -> list[sql.Composed]:
        return [
            sql.SQL("DROP TRIGGER IF EXISTS {trg} ON {t}").format(
                trg=sql.Identifier(f"swarm_archive_{migration_id}"), t=self.t
            ),
            sql.SQL("DROP FUNCTION IF EXISTS {fn}()").format(fn=sql.Identifier(SCHEMA, f"archive_{migration_id}")),
        ]

    def create_archive(self, archive: Target, legacy_type: str) -> sql.Composed:
        """``legacy_type`` is the column's full type from the catalog (``format_type``, e.g. ``vector(384)``)."""
        return sql.SQL(
            "CREATE TABLE {a} ({id} {ktype} PRIMARY KEY, {legacy} {ltype}, "
            "swarm_deleted boolean NOT NULL DEFAULT false)"
        ).format(a=archive.t, id=self.id, ktype=self.ktype, legacy=self.legacy, ltype=sql.SQL(legacy_type))

    def archive_batch(self, archive: Target, after: str | None, limit: int) -> tuple[sql.Composed, list[object]]:
        """Copy the next ``limit`` rows' legacy vectors after key ``after``; rows the capture trigger already
        wrote (newer values, tombstones) are kept. Returns (query, params); the query yields (last key, rows)."""
        where, params = self.range_clause(after, None)
        q = sql.SQL(
            "WITH b AS (SELECT {id} AS k, {legacy} AS v FROM {t} WHERE {w} ORDER BY {id} LIMIT %s), "
            "ins AS (INSERT INTO {a} ({id}, {legacy}) SELECT k, v FROM b ON CONFLICT ({id}) DO NOTHING) "
            "SELECT (SELECT k FROM b ORDER BY k DESC LIMIT 1)::text, (SELECT count(*) FROM b)"
        ).format(id=self.id, legacy=self.legacy, t=self.t, w=where, a=archive.t)
        return q, [*params, int(limit)]

    def dependents(self) -> sql.SQL:
        """What depends on a column besides its indexes (params: regclass text, column name): views, functions
        with SQL bodies, policies, defaults and generated columns, constraints, triggers, statistics. One row
        each: (what, name)."""
        return sql.SQL(
            "SELECT DISTINCT CASE d.classid "
            "WHEN 'pg_rewrite'::regclass THEN 'view' WHEN 'pg_proc'::regclass THEN 'function' "
            "WHEN 'pg_policy'::regclass THEN 'policy' WHEN 'pg_attrdef'::regclass THEN 'default or generated column' "
            "WHEN 'pg_constraint'::regclass THEN 'constraint' WHEN 'pg_trigger'::regclass THEN 'trigger' "
            "ELSE d.classid::regclass::text END, "
            "CASE d.classid "
            "WHEN 'pg_rewrite'::regclass THEN (SELECT ev_class::regclass::text FROM pg_rewrite WHERE oid = d.objid) "
            "WHEN 'pg_proc'::regclass THEN d.objid::regprocedure::text "
            "WHEN 'pg_policy'::regclass THEN (SELECT polname::text FROM pg_policy WHERE oid = d.objid) "
            "WHEN 'pg_attrdef'::regclass THEN (SELECT a.attname::text FROM pg_attrdef ad JOIN pg_attribute a "
            "  ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum WHERE ad.oid = d.objid) "
            "WHEN 'pg_constraint'::regclass THEN (SELECT conname::text FROM pg_constraint WHERE oid = d.objid) "
            "WHEN 'pg_trigger'::regclass THEN (SELECT tgname::text FROM pg_trigger WHERE oid = d.objid) "
            "ELSE d.objid::text END "
            "FROM pg_depend d JOIN pg_attribute att ON att.attrelid = d.refobjid AND att.attnum = d.refobjsubid "
            "WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = to_regclass(%s) AND att.attname = %s "
            "AND d.classid <> 'pg_class'::regclass AND d.deptype = 'n' ORDER BY 1, 2"
        )

    # -- planning ------------------------------------------------------------------------------------------
    def count_rows(self) -> sql.Composed:
        return sql.SQL("SELECT count(*) FROM {t}").format(t=self.t)

    def max_key(self) -> sql.Composed:
        # ORDER BY ... DESC LIMIT 1, not max(): max() has no uuid variant (and this reads one index entry). The
        # ordering is on the key itself, in a subquery: an outer ORDER BY "id" would sort the ::text output column.
        return sql.SQL("SELECT k::text FROM (SELECT {id} AS k FROM {t} ORDER BY {id} DESC LIMIT 1) s").format(
            id=self.id, t=self.t
        )

    def shard_bounds(self) -> sql.Composed:
        """The shards' upper bounds in key order, with their row numbers: every ``%(step)s``-th key up to row
        ``%(body)s`` (shards of equal row counts), then the keys at the rows listed in ``%(tail)s`` (the last
        round's smaller shards; a handful of row numbers, so ``= ANY`` stays cheap on a large table)."""
        return sql.SQL(
            "SELECT k::text, rn FROM (SELECT {id} AS k, row_number() OVER (ORDER BY {id}) AS rn FROM {t}) s "
            "WHERE (rn %% %(step)s = 0 AND rn <= %(body)s) OR rn = ANY(CAST(%(tail)s AS bigint[])) ORDER BY rn"
        ).format(id=self.id, t=self.t)

    def rows_in_range(self, lo: str | None, hi: str | None) -> tuple[sql.Composed, list[str]]:
        where, params = self.range_clause(lo, hi)
        return sql.SQL("SELECT count(*) FROM {t} WHERE {w}").format(t=self.t, w=where), params

    def range_clause(self, lo: str | None, hi: str | None) -> tuple[sql.Composable, list[str]]:
        parts: list[sql.Composable] = []
        params: list[str] = []
        if lo is not None:
            parts.append(sql.SQL("{id} > CAST(%s AS {ty})").format(id=self.id, ty=self.ktype))
            params.append(lo)
        if hi is not None:
            parts.append(sql.SQL("{id} <= CAST(%s AS {ty})").format(id=self.id, ty=self.ktype))
            params.append(hi)
        if not parts:
            return sql.SQL("true"), params
        return sql.SQL(" AND ").join(parts), params

    # -- backfill ------------------------------------------------------------------------------------------
    def read_batch(self, after: str | None, hi: str | None, limit: int) -> tuple[sql.Composed, list[object]]:
        """The next ``limit`` rows of a shard after the checkpoint, by keyset, that still need a vector."""
        where, params = self.range_clause(after, hi)
        q = sql.SQL(
            # Alias the text key: ORDER BY {id} would otherwise sort by the text output column, not the key.
            "SELECT {id}::text AS swarm_key, {content} FROM {t} WHERE {w} AND {new} IS NULL ORDER BY {id} LIMIT %s"
        ).format(id=self.id, content=self.content, t=self.t, w=where, new=self.new)
        return q, [*params, int(limit)]

    def read_rows(self) -> sql.Composed:
        """Current content of the given ids (for queued changes)."""
        return sql.SQL("SELECT {id}::text, {content} FROM {t} WHERE {id} = ANY(CAST(%s AS {ty}[]))").format(
            id=self.id, content=self.content, t=self.t, ty=self.ktype
        )

    def read_rows_needing(self) -> sql.Composed:
        """Current content of the given ids that have no vector yet (queued changes)."""
        return sql.SQL(
            "SELECT {id}::text AS swarm_key, {content} FROM {t} WHERE {id} = ANY(CAST(%s AS {ty}[])) "
            "AND {new} IS NULL ORDER BY {id}"
        ).format(id=self.id, content=self.content, t=self.t, ty=self.ktype, new=self.new)

    @staticmethod
    def staging(column_type: str, dim: int) -> sql.Identifier:
        # One temp table per vector type and size: a connection may serve a rehearsal and a real column.
        return sql.Identifier(f"swarm_staging_{column_type}_{int(dim)}")

    @classmethod
    def create_staging(cls, column_type: str, dim: int) -> sql.Composed:
        return sql.SQL(
            "CREATE TEMP TABLE IF NOT EXISTS {s} (id text, content_md5 text, v {ty}({dim})) ON COMMIT DELETE ROWS"
        ).format(s=cls.staging(column_type, dim), ty=sql.SQL(column_type), dim=sql.Literal(int(dim)))

    @classmethod
    def copy_staging(cls, column_type: str, dim: int) -> sql.Composed:
        return sql.SQL("COPY {s} (id, content_md5, v) FROM STDIN WITH (FORMAT BINARY)").format(
            s=cls.staging(column_type, dim)
        )

    def apply_staging(self, column_type: str, dim: int) -> sql.Composed:
        """Write staged vectors where the row still holds the content they were computed from."""
        return sql.SQL(
            # "new IS NULL": a row two drains raced for is written once, and a repeated batch changes nothing.
            "UPDATE {t} AS t SET {new} = s.v FROM {s} s "
            "WHERE t.{id} = CAST(s.id AS {ty}) AND md5(t.{content}) = s.content_md5 AND t.{new} IS NULL"
        ).format(
            t=self.t,
            new=self.new,
            s=self.staging(column_type, dim),
            id=self.id,
            ty=self.ktype,
            content=self.content,
        )

    # -- completion checks ---------------------------------------------------------------------------------
    def count_missing(self) -> sql.Composed:
        """Rows without a new vector that are not dead-lettered for their current content."""
        return sql.SQL(
            "SELECT count(*) FROM {t} t WHERE t.{new} IS NULL AND NOT EXISTS ("
            "SELECT 1 FROM swarm.dead_letters d WHERE d.migration_id = %s AND d.row_id = t.{id}::text)"
        ).format(t=self.t, new=self.new, id=self.id)

    def missing_ids(self) -> sql.Composed:
        return sql.SQL(
            "SELECT t.{id}::text FROM {t} t WHERE t.{new} IS NULL AND NOT EXISTS ("
            "SELECT 1 FROM swarm.dead_letters d WHERE d.migration_id = %s AND d.row_id = t.{id}::text) "
            "LIMIT %s"
        ).format(t=self.t, new=self.new, id=self.id)

    def enqueue_missing(self) -> sql.Composed:
        """Queue (params: migration id x3, limit) the rows with no new vector, no dead letter, no queue entry."""
        return sql.SQL(
            "INSERT INTO swarm.changes (migration_id, row_id) SELECT %s, t.{id}::text FROM {t} t "
            "WHERE t.{new} IS NULL "
            "AND NOT EXISTS (SELECT 1 FROM swarm.dead_letters d WHERE d.migration_id = %s AND d.row_id = t.{id}::text) "
            "AND NOT EXISTS (SELECT 1 FROM swarm.changes q WHERE q.migration_id = %s AND q.row_id = t.{id}::text) "
            "LIMIT %s"
        ).format(t=self.t, new=self.new, id=self.id)

    def count_with_vector(self) -> sql.Composed:
        return sql.SQL("SELECT count(*) FROM {t} WHERE {new} IS NOT NULL").format(t=self.t, new=self.new)

    def legacy_checksum(self, legacy_type: str = "vector", where: sql.Composable | None = None) -> sql.Composed:
        """An order-independent digest of (key, legacy vector) over the whole table: (rows, sum of 64-bit row
        hashes). It streams (constant memory at any size) and equals that of an exact copy, whatever the order."""
        row_h = sql.SQL(
            "('x' || left(md5({id}::text || ':' || coalesce(encode({send}({legacy}), 'base64'), 'NULL')), 16))"
        )
        return sql.SQL(
            "SELECT count(*), coalesce(sum({h}::bit(64)::bigint::numeric), 0)::text FROM {t} WHERE {w}"
        ).format(
            h=row_h.format(id=self.id, send=sql.Identifier(f"{legacy_type}_send"), legacy=self.legacy),
            t=self.t,
            w=where if where is not None else sql.SQL("true"),
        )

    # -- index ---------------------------------------------------------------------------------------------
    def index_name(self, migration_id: int) -> str:
        return f"swarm_{migration_id}_{self.new_column}_idx"[:63]

    def create_index(
        self,
        migration_id: int,
        method: str,
        opclass: str,
        lists: int | None = None,
        *,
        m: int | None = None,
        ef_construction: int | None = None,
        dim: int | None = None,
    ) -> sql.Composed:
        """The ANN index on the new column: ``lists`` for ivfflat, ``m``/``ef_construction`` for hnsw (pgvector's
        defaults where None). ``hnsw-bq`` is an hnsw index on ``binary_quantize(column)::bit(dim)`` (``opclass``
        ``bit_hamming_ops``): one bit a dimension, 448 bytes a row at 3584 dims instead of 7 KB, searched by
        :meth:`search` with ``rerank``."""
        params = {"lists": lists} if method == "ivfflat" else {"m": m, "ef_construction": ef_construction}
        given = [sql.SQL("{} = {}").format(sql.SQL(k), sql.Literal(int(v))) for k, v in params.items() if v]
        with_ = sql.SQL(" WITH ({})").format(sql.SQL(", ").join(given)) if given else sql.SQL("")
        if method not in ("ivfflat", "hnsw", "hnsw-bq"):
            raise ValueError(f"index method {method!r}: expected ivfflat, hnsw or hnsw-bq")
        key: sql.Composable = self.new
        if method == "hnsw-bq":
            if dim is None:
                raise ValueError("an hnsw-bq index needs the column's dimension")
            key = sql.SQL("(binary_quantize({new})::bit({dim}))").format(new=self.new, dim=sql.Literal(int(dim)))
        return sql.SQL("CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {t} USING {using} ({key} {op}){w}").format(
            name=sql.Identifier(self.index_name(migration_id)),
            t=self.t,
            using=sql.SQL("hnsw" if method == "hnsw-bq" else method),
            key=key,
            op=sql.SQL(opclass),
            w=with_,
        )

    def drop_index(self, migration_id: int) -> sql.Composed:
        schema, _ = split_table(self.table)
        name = self.index_name(migration_id)
        ident = sql.Identifier(schema, name) if schema else sql.Identifier(name)
        return sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(ident)

    # -- search --------------------------------------------------------------------------------------------
    @staticmethod
    def search_settings() -> sql.SQL:
        """The ANN settings of one search, parameters ``(ef_search, probes)`` as text.

        ``set_config(..., true)`` is ``SET LOCAL``: run it in the search's own transaction and the values reach
        that search and nothing else (not the next statement on a pooled connection, not a later search that
        asks for other values). Each setting only affects its own kind of index, so both are always set.
        """
        return sql.SQL("SELECT set_config('hnsw.ef_search', %s, true), set_config('ivfflat.probes', %s, true)")

    def search(
        self, column: str, column_type: str, dim: int, *, require: str | None = None, rerank: int | None = None
    ) -> sql.Composed:
        """k nearest rows by cosine distance on ``column`` (params: vector, vector, k); with ``require``, only
        rows where that column is not NULL (validation during the backfill: both arms search the rows that
        already have a new vector, so they compare like with like).

        With ``rerank`` (an ``hnsw-bq`` index): the ``rerank`` nearest rows by Hamming distance between binary
        quantizations (what the bit index answers), re-ranked by their exact cosine distance: pgvector's
        documented pattern. ``hnsw.ef_search`` must be at least ``rerank`` (:meth:`AnnSettings.params`)."""
        req = sql.SQL(" AND {} IS NOT NULL").format(sql.Identifier(require)) if require else sql.SQL("")
        parts = dict(
            id=self.id,
            col=sql.Identifier(column),
            ty=sql.SQL(column_type),
            dim=sql.Literal(int(dim)),
            t=self.t,
            req=req,
        )
        if rerank:
            return sql.SQL(
                "SELECT c.row_id, c.d FROM (SELECT {id}::text AS row_id, {col} <=> CAST(%s AS {ty}({dim})) AS d "
                "FROM {t} WHERE {col} IS NOT NULL{req} ORDER BY binary_quantize({col})::bit({dim}) <~> "
                "binary_quantize(CAST(%s AS {ty}({dim}))) LIMIT {rerank}) c ORDER BY c.d LIMIT %s"
            ).format(rerank=sql.Literal(int(rerank)), **parts)
        return sql.SQL(
            "SELECT {id}::text, {col} <=> CAST(%s AS {ty}({dim})) AS d FROM {t} WHERE {col} IS NOT NULL{req} "
            "ORDER BY {col} <=> CAST(%s AS {ty}({dim})) LIMIT %s"
        ).format(**parts)
