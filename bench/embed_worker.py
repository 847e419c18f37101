"""One process of the embed figure: ``python -m bench.embed_worker SPEC_JSON``.

It loads one side (sentence-transformers, or :class:`~model.embedder.LlamaEmbedder` on a GGUF) with its thread
count, warms it on texts outside the measured set and prints ``ready``. Then, for each line on stdin:

- ``go``: embed its share of the texts (every ``nshards``-th from ``shard``), print ``done SECONDS CPU_SECONDS``;
- ``vec PATH``: save the vectors of its share to ``PATH`` (``.npy``), print ``saved``;
- ``quit`` (or end of input): exit.

The parent (bench/embed.py) starts the processes of one split together and times a round from its ``go`` to the
last ``done``, so a split of 2 processes x 1 thread and one of 1 process x 2 threads are timed the same way.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any


def _load(spec: dict[str, Any]) -> Any:
    threads = int(spec["threads"])
    if spec["side"] == "st":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
        st = SentenceTransformer(spec["model"], device="cpu")
        batch = int(spec["batch_size"])

        def run_st(texts: list[str]) -> Any:
            return st.encode(texts, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True)

        return run_st
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    from model.embedder import LlamaEmbedder

    # ``migrator``: the embedder built as a data-migrator builds it (the config's [embedding] options), fed the
    # migrator's batches through embed_many; else a bare embedder (no cache) given every text in one call.
    mig: dict[str, Any] | None = spec.get("migrator")
    emb = LlamaEmbedder(
        spec["model"],
        cache_size=int(mig["cache_size"]) if mig else 0,
        batch_size=int(spec["batch_size"]),
        n_threads=threads,
        flash_attn=bool(spec.get("flash_attn", True)),
        **({k: mig[k] for k in ("document_prefix", "query_prefix", "truncate_dim", "expected_dim")} if mig else {}),
    )

    def run_llama(texts: list[str]) -> Any:
        return emb.embed(texts, use_cache=False)

    def run_batches(texts: list[str]) -> Any:
        step = int(spec["batch_size"])
        for i in range(0, len(texts), step):
            emb.embed_many(texts[i : i + step])

    return run_batches if mig else run_llama


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    with open(spec["texts_file"], encoding="utf-8") as f:
        data = json.load(f)
    shard, nshards = int(spec["shard"]), int(spec["nshards"])
    mine = [t for i, t in enumerate(data["texts"]) if i % nshards == shard]
    run = _load(spec)
    run(data["warm"])
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        if cmd[0] == "go":
            t, c = time.perf_counter(), time.process_time()
            run(mine)
            print(f"done {time.perf_counter() - t:.4f} {time.process_time() - c:.4f}", flush=True)
        elif cmd[0] == "vec":
            import numpy as np

            np.save(cmd[1], np.asarray(run(mine), dtype=np.float32))
            print("saved", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
