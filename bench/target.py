"""``target_*``: speed and memory on nomic-embed-code's architecture, llama.cpp against transformers.

nomic-embed-code (a 7B Qwen2) cannot be fetched here, so a model of its architecture at a size this machine runs
stands in: Qwen2-0.5B's shape (hidden 896, 24 layers, 14 heads / 2 KV heads, intermediate 4864, Qwen2's
151,936-token vocabulary, tied embeddings) with random weights (``model/qwen2.py``), written once as a
``transformers`` checkpoint (fp32 safetensors) and once as a GGUF f16 from the same arrays, which llama.cpp's
quantizer turns into Q8_0 and Q4_K_M. They are cached in ``model/qwen2-0.5b-shape/`` (git-ignored).

Every run embeds the same texts (demo-corpus functions of 150..400 tokens; both tokenizers are the same BPE, the
token counts are checked equal) with the same thread count, each in its own process so that its peak RSS
(``VmHWM``: heap plus the model pages it touched) is its own:

* llama.cpp: :class:`~model.embedder.LlamaEmbedder` as a migrator builds it (``max_tokens`` 512, batch 8), last-token
  pooling read from the GGUF;
* transformers: ``Qwen2Model`` fp32 (the bench extra's torch, CPU), right-padded batches of 8, the last real token's
  final hidden state, normalized: what sentence-transformers does for a last-token model.

Each llama.cpp figure is its value next to transformers' (the baseline), ratio = llama.cpp / transformers; the
targets are the seed's claims (10x the speed; 2 GB -> 500 MB, i.e. a quarter of the memory). Random weights make
the vectors meaningless but not the arithmetic: the cosine of each run's vectors to transformers' is in the notes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.lab import Lab
from bench.results import Result, Target, ratio
from swarm.core.log import get_logger

log = get_logger()

QWEN2_05B = dict(
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    vocab_size=151_936,
    max_position_embeddings=32_768,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
QUANTS = ("f16", "Q8_0", "Q4_K_M")
BATCH = 8


def build(out: Path) -> dict[str, Path]:
    """The checkpoint and the three GGUFs of the same random weights (kept; rebuilt only when missing)."""
    from model.quantize import quantize
    from model.qwen2 import (
        Qwen2Config,
        build_vocab,
        random_qwen2_weights,
        write_qwen2_gguf_from_weights,
        write_qwen2_hf,
    )

    out.mkdir(parents=True, exist_ok=True)
    paths = {q: out / f"qwen2-0.5b-shape.{q}.gguf" for q in QUANTS}
    hf = out / "hf"
    if not paths["f16"].exists() or not (hf / "model.safetensors").exists():
        cfg = Qwen2Config(**QWEN2_05B)  # type: ignore[arg-type]
        vocab = build_vocab(cfg.vocab_size)
        weights = random_qwen2_weights(cfg, seed=0)
        write_qwen2_hf(hf, weights, cfg, vocab)
        write_qwen2_gguf_from_weights(paths["f16"], weights, cfg, vocab, ftype="f16", name="qwen2-0.5b-shape-random")
        del weights
    for q in ("Q8_0", "Q4_K_M"):
        if not paths[q].exists():
            quantize(paths["f16"], paths[q], q, n_threads=os.cpu_count() or 1)
    return {**paths, "hf": hf}


def _status() -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(rest.split()[0]) // 1024
    return out


def run_llama(model: str, texts: list[str], threads: int, vectors: str) -> dict[str, Any]:
    from model.embedder import LlamaEmbedder

    t0 = time.perf_counter()
    e = LlamaEmbedder(model, cache_size=0, n_threads=threads, n_ctx=512, batch_size=BATCH)
    load_s = time.perf_counter() - t0
    loaded = _status()
    e.embed(texts[:2])  # warm-up
    e.stats.reset()
    t0 = time.perf_counter()
    vecs = e.embed(texts)
    seconds = time.perf_counter() - t0
    np.save(vectors, vecs)
    tokens, truncated = e.stats.tokens, e.stats.truncated
    e.close()
    return {"tokens": tokens, "truncated": truncated, "seconds": seconds, "load_s": load_s, "loaded": loaded}


def run_torch(hf: str, texts: list[str], threads: int, vectors: str) -> dict[str, Any]:
    import torch
    from tokenizers import Tokenizer
    from transformers import Qwen2Model

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = Qwen2Model.from_pretrained(hf, dtype=torch.float32)
    model.eval()
    tok = Tokenizer.from_file(str(Path(hf) / "tokenizer.json"))
    load_s = time.perf_counter() - t0
    loaded = _status()
    eos = model.config.eos_token_id
    pad = eos if isinstance(eos, int) else 0

    def embed(batch: list[str]) -> np.ndarray:
        ids = [e.ids for e in tok.encode_batch(batch)]
        n = max(map(len, ids))
        x = torch.full((len(ids), n), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), n), dtype=torch.long)
        for r, row in enumerate(ids):
            x[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
        with torch.inference_mode():
            h = model(input_ids=x, attention_mask=mask).last_hidden_state
        v = h[torch.arange(len(ids)), mask.sum(1) - 1]
        return torch.nn.functional.normalize(v, dim=-1).numpy()

    embed(texts[:2])  # warm-up
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # like lengths together, as llama.cpp sorts
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    t0 = time.perf_counter()
    for s in range(0, len(order), BATCH):
        chunk = order[s : s + BATCH]
        out[chunk] = embed([texts[i] for i in chunk])
    seconds = time.perf_counter() - t0
    np.save(vectors, out)
    tokens = sum(len(e.ids) for e in tok.encode_batch(texts))
    return {"tokens": tokens, "truncated": 0, "seconds": seconds, "load_s": load_s, "loaded": loaded}


def _run(kind: str, model: Path, texts_file: Path, threads: int, vectors: Path) -> dict[str, Any]:
    """One run in a fresh process (``python -m bench.target``), so its peak RSS is its own."""
    cmd = [sys.executable, "-m", "bench.target", kind, str(model), str(texts_file), str(threads), str(vectors)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{kind} {model.name}: {tail[0]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def fig_target(lab: Lab) -> list[Result]:
    """tokens/s and peak RSS of llama.cpp f16 / Q8_0 / Q4_K_M next to transformers fp32, same weights and texts."""
    from tokenizers import Tokenizer

    s = lab.sizes
    threads = lab.base.embedding.n_threads or os.cpu_count() or 1
    root = Path(lab.base.root or ".").resolve()
    paths = build(root / "model" / "qwen2-0.5b-shape")
    tok = Tokenizer.from_file(str(paths["hf"] / "tokenizer.json"))
    pool = [d.content for d in lab.docs()]
    counts = [len(e.ids) for e in tok.encode_batch(pool)]
    fitting = [t for t, n in zip(pool, counts, strict=True) if 150 <= n <= 400]
    step = max(1, len(fitting) // s.target_texts)
    texts = fitting[::step][: s.target_texts]
    work = lab.state_dir / "target"
    work.mkdir(parents=True, exist_ok=True)
    texts_file = work / "texts.json"
    texts_file.write_text(json.dumps(texts))

    runs: dict[str, dict[str, Any]] = {}
    runs["torch"] = _run("torch", paths["hf"], texts_file, threads, work / "torch.npy")
    ref = np.load(work / "torch.npy")
    for q in QUANTS:
        r = _run("llama", paths[q], texts_file, threads, work / f"{q}.npy")
        cos = np.einsum("ij,ij->i", np.load(work / f"{q}.npy"), ref)
        r["cos_vs_fp32"] = {"min": round(float(cos.min()), 4), "mean": round(float(cos.mean()), 4)}
        r["file_mb"] = round(paths[q].stat().st_size / 1e6, 1)
        runs[q] = r
        log.info("bench.target", run=q, **{k: v for k, v in r.items() if k != "loaded"})
    for r in runs.values():
        r["tokens_per_s"] = round(r["tokens"] / r["seconds"], 2)
    base = runs["torch"]
    common = (
        f"Qwen2-0.5B-shaped random weights (494M params, 151,936-token vocab), {len(texts)} demo functions, "
        f"{base['tokens']:,} tokens, {threads} threads, each run in its own process; transformers fp32 "
        f"{base['tokens_per_s']:.1f} tokens/s, peak RSS {base['VmHWM']:,} MB"
    )
    results = []
    for q in QUANTS:
        r = runs[q]
        same = "" if r["tokens"] == base["tokens"] else f" (tokens {r['tokens']} vs {base['tokens']}!)"
        note = (
            f"llama.cpp {q} ({r['file_mb']:,.0f} MB file): {r['tokens_per_s']:.1f} tokens/s, "
            f"peak RSS {r['VmHWM']:,} MB, cos vs fp32 min {r['cos_vs_fp32']['min']:.3f}{same}; {common}"
        )
        tag = q.lower()
        results.append(
            Result(
                f"target_tokens_per_s_{tag}",
                r["tokens_per_s"],
                "tokens/s",
                Target(">=", 10, "ratio"),
                baseline=base["tokens_per_s"],
                baseline_label="transformers fp32 tokens/s",
                ratio=ratio(r["tokens_per_s"], base["tokens_per_s"]),
                ratio_label="llama.cpp / transformers",
                notes=note,
                details={"runs": runs, "texts": len(texts)},
            )
        )
        results.append(
            Result(
                f"target_peak_rss_mb_{tag}",
                float(r["VmHWM"]),
                "MB",
                Target("<=", 0.25, "ratio"),
                baseline=float(base["VmHWM"]),
                baseline_label="transformers fp32 peak RSS MB",
                ratio=ratio(float(r["VmHWM"]), float(base["VmHWM"])),
                ratio_label="llama.cpp / transformers",
                notes=note,
                details={"runs": {q: r, "torch": base}},
            )
        )
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.target", description="one run of the target figure")
    p.add_argument("kind", choices=("llama", "torch"))
    p.add_argument("model")
    p.add_argument("texts")
    p.add_argument("threads", type=int)
    p.add_argument("vectors")
    a = p.parse_args(argv)
    texts = json.loads(Path(a.texts).read_text())
    fn = run_llama if a.kind == "llama" else run_torch
    got = fn(a.model, texts, a.threads, a.vectors)
    got.update(_status())
    print(json.dumps(got))


if __name__ == "__main__":
    main()
