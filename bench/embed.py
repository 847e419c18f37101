"""``embed_ratio_vs_sentence_transformers``: tokens/s of the swarm's embedder against sentence-transformers
on the same model, texts and cores."""

from __future__ import annotations

import os
import statistics
import time
from typing import TYPE_CHECKING

import numpy as np

from bench.lab import Lab
from bench.results import ST_BATCH, Result, Target, version
from swarm.core.errors import SwarmError
from swarm.core.log import get_logger

if TYPE_CHECKING:
    pass

log = get_logger()


def fig_embed(lab: Lab) -> list[Result]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise SwarmError(
            f"the baseline needs the bench extra ({exc.name} missing): pip install -e '.[bench]'"
        ) from None
    from model.convert import minilm_source
    from model.embedder import DEFAULT_PACK_TOKENS, LlamaEmbedder

    sizes = lab.sizes
    threads = os.cpu_count() or 1
    q8, f16 = lab.models()
    texts, counts = lab.code_texts(sizes.embed_texts)
    tokens = sum(counts)
    e = lab.base.embedding
    torch.set_num_threads(threads)
    with minilm_source() as src:
        st = SentenceTransformer(str(src), device="cpu")
    st_max = st.max_seq_length
    # Both GGUFs the swarm ships: Q8_0 (the demo's new model, half the memory) and f16 (on AVX2 without
    # AVX-512, llama.cpp's f16 matrix products ran faster than its Q8_0 ones here). The figure is the faster.
    llamas = {
        name: LlamaEmbedder(path, cache_size=0, batch_size=e.batch_size, n_threads=threads, flash_attn=e.flash_attn)
        for name, path in (("Q8_0", q8), ("f16", f16))
    }
    try:
        # Warm every side (allocations, thread pools, first-call paths) on texts outside the measured set.
        warm = [d.content for d in lab.docs()[:32]]
        st.encode(warm, batch_size=ST_BATCH, normalize_embeddings=True)
        for ll in llamas.values():
            ll.embed(warm)
            ll.stats.reset()

        def time_st() -> tuple[float, np.ndarray]:
            t = time.perf_counter()
            v = st.encode(texts, batch_size=ST_BATCH, normalize_embeddings=True, convert_to_numpy=True)
            return time.perf_counter() - t, np.asarray(v, dtype=np.float32)

        def time_llama(name: str) -> tuple[float, np.ndarray]:
            t = time.perf_counter()
            v = llamas[name].embed(texts)
            return time.perf_counter() - t, v

        rounds = []
        vecs: dict[str, np.ndarray] = {}
        sides = ["st", *llamas]
        for i in range(sizes.embed_rounds):
            load = os.getloadavg()[0]
            took: dict[str, float] = {}
            for side in sides[i % len(sides) :] + sides[: i % len(sides)]:  # rotate who goes first
                took[side], vecs[side] = time_st() if side == "st" else time_llama(side)
            rounds.append(
                {
                    "st_s": round(took["st"], 3),
                    **{f"{n}_s": round(took[n], 3) for n in llamas},
                    **{f"ratio_{n}": round(took["st"] / took[n], 3) for n in llamas},
                    "load1": round(load, 2),
                }
            )
            log.info("bench.embed.round", **rounds[-1])
        per_model = {
            n: {
                "tokens_per_second": tokens / statistics.median(r[f"{n}_s"] for r in rounds),
                "ratio": statistics.median(r[f"ratio_{n}"] for r in rounds),
                "cosine_min_to_st": float(np.sum(vecs["st"] * vecs[n], axis=1).min()),
                "truncated": llamas[n].stats.truncated,
                "batches": llamas[n].stats.batches,
            }
            for n in llamas
        }
    finally:
        for ll in llamas.values():
            ll.close()
    best = max(per_model, key=lambda n: per_model[n]["ratio"])
    other = next(n for n in per_model if n != best)
    b = per_model[best]
    st_tps = tokens / statistics.median(r["st_s"] for r in rounds)
    notes = (
        f"{len(texts)} stdlib functions, {tokens / len(texts):.0f} tokens on average, {threads} threads each; "
        f"{best} GGUF (the faster; {other}: {per_model[other]['tokens_per_second']:,.0f} tokens/s, ratio "
        f"{per_model[other]['ratio']:.3f}), flash_attn={e.flash_attn}, micro-batches packing up to "
        f"{DEFAULT_PACK_TOKENS} tokens vs sentence-transformers "
        f"{version('sentence-transformers')} (torch {torch.__version__}, fp32, batch {ST_BATCH}); "
        f"median of {len(rounds)} rotating rounds; cosine to sentence-transformers min {b['cosine_min_to_st']:.4f}"
    )
    return [
        Result(
            "embed_ratio_vs_sentence_transformers",
            b["tokens_per_second"],
            "tokens/s",
            Target(">=", 1.5, "ratio"),
            baseline=st_tps,
            baseline_label="sentence-transformers tokens/s",
            ratio=b["ratio"],
            ratio_label=f"llama.cpp {best} / sentence-transformers",
            notes=notes,
            details={
                "texts": len(texts),
                "tokens": tokens,
                "threads": threads,
                "rounds": rounds,
                "models": per_model,
                "figure_model": best,
                "st_max_seq_length": st_max,
                "st_batch_size": ST_BATCH,
                "llama_batch_size": e.batch_size,
                "flash_attn": e.flash_attn,
            },
        )
    ]
