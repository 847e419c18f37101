"""The one place that builds an embedder from a swarm config: the migrators, the router, the validator,
``assess``, ``decommission`` and the benchmark all get theirs here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from model.embedder import LlamaEmbedder
    from swarm.core.config import Config


def embedder_for(
    cfg: Config,
    arm: Literal["new", "legacy"] = "new",
    *,
    n_threads: int | None = None,
    cache_size: int | None = None,
    batch_size: int | None = None,
) -> LlamaEmbedder:
    """The ``[embedding]`` (new) or ``[legacy]`` model of ``cfg``, loaded with its prefixes.

    The new model is checked against ``[embedding].dimension`` (and cut to ``truncate_dim``); the legacy one
    is whatever filled the legacy column. ``n_threads``, ``cache_size`` and ``batch_size`` override the config.
    """
    from model.embedder import LlamaEmbedder

    e = cfg.embedding
    common = {
        "cache_size": e.cache_size if cache_size is None else cache_size,
        "batch_size": batch_size or e.batch_size,
        "n_threads": n_threads or e.n_threads,
        "flash_attn": e.flash_attn,
    }
    if arm == "legacy":
        lg = cfg.legacy
        return LlamaEmbedder(
            str(cfg.path(lg.model_path)),
            document_prefix=lg.document_prefix,
            query_prefix=lg.query_prefix,
            **common,  # type: ignore[arg-type]
        )
    return LlamaEmbedder(
        str(cfg.path(e.model_path)),
        document_prefix=e.document_prefix,
        query_prefix=e.query_prefix,
        truncate_dim=e.truncate_dim,
        expected_dim=e.dimension,
        **common,  # type: ignore[arg-type]
    )
