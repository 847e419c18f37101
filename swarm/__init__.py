"""swarm: migrate the embeddings of a live PostgreSQL/pgvector table to a GGUF model with a Ray swarm.

The public API, what applications and scripts may rely on (everything else may change between releases):

* :mod:`swarm.commands`: one function per command of ``python -m swarm`` (``init``, ``spawn``, ``orchestrate``,
  ``status``, ``rollback``, ``validate``, ``rollout``, ``decommission``, ...), each taking a :class:`Config`;
* :func:`load_config` and :class:`Config`: a TOML file with ``SWARM_*`` environment overrides;
* :class:`Router` (and :class:`AsyncRouter`): the query router an application searches through while the share
  moves from legacy to new (``Router.from_config``, ``search(..., where=..., columns=...)``, ``arm(caller)``);
  in SQL, ``swarm.arm(table, caller)`` gives the same answer (README, "Integrating your application");
* :class:`EmbeddingAdapter`: what swarm needs from an embedding model (``LlamaEmbedder`` implements it);
* the errors: :class:`SwarmError` and its subclasses, each with a one-line message and an exit code.

Names are imported on first use, so ``import swarm`` (and ``python -m swarm --help``) stays instant.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "commands": ("swarm.commands", None),
    "Config": ("swarm.core.config", "Config"),
    "load_config": ("swarm.core.config", "load_config"),
    "Router": ("swarm.serving.router", "Router"),
    "AsyncRouter": ("swarm.serving.router", "AsyncRouter"),
    "Arm": ("swarm.serving.router", "Arm"),
    "SearchResult": ("swarm.serving.router", "SearchResult"),
    "Row": ("swarm.serving.router", "Row"),
    "EmbeddingAdapter": ("model.embedder", "EmbeddingAdapter"),
    "LlamaEmbedder": ("model.embedder", "LlamaEmbedder"),
    "SwarmError": ("swarm.core.errors", "SwarmError"),
    "ConfigError": ("swarm.core.errors", "ConfigError"),
    "UsageError": ("swarm.core.errors", "UsageError"),
    "ModelError": ("swarm.core.errors", "ModelError"),
    "DimensionMismatch": ("swarm.core.errors", "DimensionMismatch"),
    "DatabaseError": ("swarm.core.errors", "DatabaseError"),
    "MigrationError": ("swarm.core.errors", "MigrationError"),
    "Overloaded": ("swarm.core.errors", "Overloaded"),
    "DatabaseUnavailable": ("swarm.core.errors", "DatabaseUnavailable"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'swarm' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    value = importlib.import_module(module) if attr is None else getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
