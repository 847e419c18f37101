"""swarm: migrate the embeddings of a live PostgreSQL/pgvector table to a GGUF model with a Ray swarm."""

from __future__ import annotations

__version__ = "0.1.0"
