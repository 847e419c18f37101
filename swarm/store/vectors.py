"""Bulk vector writes: binary COPY into a temporary staging table, then one ``UPDATE ... FROM``.

Measured on the embedded server at ~46k rows/s for 384-dim vectors, against a few thousand rows/s for
row-by-row UPDATEs. The UPDATE joins on the key and on md5 of the content the vector was computed from, so a
row whose content changed after it was read keeps its NULL (and its queued change) instead of a stale vector.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import psycopg

from swarm.store.sql import Target


def content_md5(text: str) -> str:
    """md5 of the UTF-8 text, as PostgreSQL's ``md5(text)`` computes it on a UTF8 database."""
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def _vector_value(v: np.ndarray, column_type: str) -> object:
    if column_type == "halfvec":
        from pgvector import HalfVector

        return HalfVector(v.astype(np.float16))
    from pgvector import Vector

    return Vector(v.astype(np.float32, copy=False))


def write_vectors(
    conn: psycopg.Connection,
    target: Target,
    ids: Sequence[str],
    md5s: Sequence[str],
    vectors: np.ndarray,
    *,
    column_type: str,
    dim: int,
) -> int:
    """Stage and apply vectors inside the caller's transaction; returns the rows written.

    Must run inside a transaction: the staging table is ``ON COMMIT DELETE ROWS``.
    """
    if not ids:
        return 0
    conn.execute(Target.create_staging(column_type, dim))
    with conn.cursor() as cur:
        with cur.copy(Target.copy_staging(column_type, dim)) as copy:
            copy.set_types(["text", "text", column_type])
            for i, h, v in zip(ids, md5s, vectors, strict=True):
                copy.write_row((i, h, _vector_value(v, column_type)))
        cur.execute(target.apply_staging(column_type, dim))
        return cur.rowcount
