"""One search on a vector column, with the ANN settings it runs under.

The router, the validators and the benchmark all search through :func:`run_search`, so the settings that make a
figure are the settings that serve the application.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from swarm.store.sql import Target

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

    def params(self, k: int) -> list[str]:
        # An hnsw scan returns at most ef_search rows: never fewer than the k asked for.
        return [str(max(self.ef_search, int(k))), str(self.probes)]


def run_search(
    conn: psycopg.Connection, query: sql.Composable, vec: Any, k: int, ann: AnnSettings | None
) -> list[tuple[Any, ...]]:
    """One search (``Target.search``/``search_sql``); with ``ann``, its settings are ``SET LOCAL`` in the
    search's own transaction, so they reach this search only. The router, the validator (through the router)
    and ``swarm bench`` all search through here."""
    if ann is None:
        return conn.execute(query, [vec, vec, int(k)]).fetchall()
    with conn.transaction():
        conn.execute(Target.search_settings(), ann.params(k))
        return conn.execute(query, [vec, vec, int(k)]).fetchall()
