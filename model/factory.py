"""The one place that builds an embedder from a swarm config: the migrators, the router, the validator,
``assess``, ``decommission`` and the benchmark all get theirs here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import structlog

if TYPE_CHECKING:
    from model.embedder import LlamaEmbedder
    from swarm.core.config import Config

log = structlog.get_logger()


def gpu_layers(cfg: Config, *, strict: bool = False) -> int:
    """``n_gpu_layers`` for the new model: 0 on ``device = "cpu"``, else -1 (every layer on the GPU).

    ``strict`` (the migrators, which asked Ray for GPUs): a llama.cpp without a GPU backend is a
    :class:`~model.errors.ConfigError` saying how to install one. Otherwise (the router and validators, which
    embed a query at a time wherever they run) such a process embeds on the CPU and says so.
    """
    device = cfg.embedding.device
    if device == "cpu":
        return 0
    from model.embedder import gpu_offload_supported, require_gpu_backend

    if strict:
        require_gpu_backend(device)
    elif not gpu_offload_supported():
        log.warning("embedder.no_gpu_backend", device=device, hint="this process embeds on the CPU")
        return 0
    return -1


def embedder_for(
    cfg: Config,
    arm: Literal["new", "legacy"] = "new",
    *,
    n_threads: int | None = None,
    cache_size: int | None = None,
    batch_size: int | None = None,
    strict_device: bool = False,
) -> LlamaEmbedder:
    """The ``[embedding]`` (new) or ``[legacy]`` model of ``cfg``, loaded with its prefixes.

    The new model is checked against ``[embedding].dimension`` (and cut to ``truncate_dim``), embeds at most
    ``[embedding].max_tokens`` tokens per text and runs on ``[embedding].device`` (see :func:`gpu_layers`;
    ``strict_device`` for the migrators); the legacy one is whatever filled the legacy column, on the CPU, at
    its own context. ``n_threads``, ``cache_size`` and ``batch_size`` override the config.
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
        n_ctx=e.max_tokens,
        n_gpu_layers=gpu_layers(cfg, strict=strict_device),
        **common,  # type: ignore[arg-type]
    )
