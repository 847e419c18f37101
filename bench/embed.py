"""``embed_ratio_vs_sentence_transformers`` (Q8_0, the demo's new model) and
``embed_ratio_f16_vs_sentence_transformers``: whole-machine tokens/s of the swarm's embedder against
sentence-transformers on the same model, texts and cores.

Each side runs in its own processes (bench/embed_worker.py), in each split of the cores: one process with every
thread, and one process per core with one thread each; the swarm's side also in the split a migration would use
(``swarm.migrators`` x ``threads_per_migrator``, 2 x 1 on two cores). Every process is loaded and warmed first;
then each round times every configuration once, in rotated order, from its ``go`` to its last process's
``done`` (one process sees every ``nshards``-th text). The headline compares the swarm's embedding as a
migration runs it with sentence-transformers' best split (by median tokens/s), per round; the figure is the
median of the per-round ratios."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from bench.lab import Lab
from bench.results import ST_BATCH, Result, Target, version
from swarm.core.errors import SwarmError
from swarm.core.log import get_logger

log = get_logger()

#: The rest between two timed configurations, so a side's idle threads (torch's, OpenMP's) have stopped spinning.
SETTLE_S = 1.0


@dataclass
class Config:
    """One side in one split: ``procs`` processes of ``threads`` threads each."""

    side: str  # "st", "Q8_0" or "f16"
    procs: int
    threads: int
    workers: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.side} {self.procs}x{self.threads}"


def splits(cores: int, migrators: int, threads_per_migrator: int) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """(the splits every side is timed in: 1 x cores and cores x 1; the swarm's own split, ``migrators x
    threads_per_migrator``, which the llama.cpp sides are also timed in when it is neither)."""
    every = [(1, cores)] + ([(cores, 1)] if cores > 1 else [])
    mine = (migrators, threads_per_migrator)
    return every, mine


def _read_line(proc: subprocess.Popen[str], what: str) -> list[str]:
    out: IO[str] | None = proc.stdout
    line = out.readline() if out is not None else ""
    if not line:
        raise SwarmError(f"the embed worker for {what} exited (code {proc.poll()}); see its output above")
    return line.split()


def _send(proc: subprocess.Popen[str], text: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(text + "\n")
    proc.stdin.flush()


def spawn_workers(specs: list[dict[str, Any]]) -> list[subprocess.Popen[str]]:
    """One ``bench.embed_worker`` process per spec (not waited for: see :func:`wait_ready`)."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return [
        subprocess.Popen(
            [sys.executable, "-m", "bench.embed_worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**env, "OMP_NUM_THREADS": str(spec["threads"])},
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        for spec in specs
    ]


def wait_ready(workers: list[subprocess.Popen[str]], what: str) -> None:
    for w in workers:
        if _read_line(w, what)[:1] != ["ready"]:
            raise SwarmError(f"the embed worker for {what} did not start")


def time_go(workers: list[subprocess.Popen[str]], what: str) -> tuple[float, float]:
    """(wall seconds from the ``go`` to the last ``done``, CPU seconds of all the workers) for one pass."""
    t = time.perf_counter()
    for w in workers:
        _send(w, "go")
    cpu = 0.0
    for w in workers:
        word, _, cpu_s = _read_line(w, what)
        if word != "done":
            raise SwarmError(f"the embed worker for {what} answered {word!r}")
        cpu += float(cpu_s)
    return time.perf_counter() - t, cpu


def stop_workers(workers: list[subprocess.Popen[str]]) -> None:
    for w in workers:
        with contextlib.suppress(OSError, ValueError):
            _send(w, "quit")
    for w in workers:
        try:
            w.wait(timeout=20)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()


def fig_embed(lab: Lab) -> list[Result]:
    try:
        import sentence_transformers  # noqa: F401
        import torch
    except ImportError as exc:
        raise SwarmError(
            f"the baseline needs the bench extra ({exc.name} missing): pip install -e '.[bench]'"
        ) from None
    from agents.actors import threads_per_migrator
    from model.convert import minilm_source
    from model.embedder import DEFAULT_PACK_TOKENS

    sizes = lab.sizes
    cores = os.cpu_count() or 1
    q8, f16 = lab.models()
    texts, counts = lab.code_texts(sizes.embed_texts)
    tokens = sum(counts)
    e, sw = lab.base.embedding, lab.base.swarm
    every, mine = splits(cores, sw.migrators, threads_per_migrator(sw.threads_per_migrator, sw.migrators))
    configs = [Config("st", p, t) for p, t in every]
    for side in ("Q8_0", "f16"):
        configs += [Config(side, p, t) for p, t in sorted({*every, mine})]
    models = {"Q8_0": str(q8), "f16": str(f16)}
    rounds: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="swarm-bench-embed-")))
        st_dir = stack.enter_context(minilm_source())
        texts_file = tmp / "texts.json"
        warm = [d.content for d in lab.docs()[:32]]
        texts_file.write_text(json.dumps({"texts": texts, "warm": warm}), encoding="utf-8")
        stack.callback(_stop_all, configs)
        for c in configs:  # start every process, then wait for all: the loads overlap
            c.workers = spawn_workers(
                [
                    {
                        "side": "st" if c.side == "st" else "llama",
                        "model": str(st_dir) if c.side == "st" else models[c.side],
                        "threads": c.threads,
                        "batch_size": ST_BATCH if c.side == "st" else e.batch_size,
                        "flash_attn": e.flash_attn,
                        "texts_file": str(texts_file),
                        "shard": shard,
                        "nshards": c.procs,
                    }
                    for shard in range(c.procs)
                ]
            )
        for c in configs:
            wait_ready(c.workers, c.name)
        for i in range(sizes.embed_rounds):
            order = configs[i % len(configs) :] + configs[: i % len(configs)]  # rotate who goes first
            got: dict[str, Any] = {"load1": round(os.getloadavg()[0], 2)}
            for c in order:
                time.sleep(SETTLE_S)
                wall, cpu = time_go(c.workers, c.name)
                got[c.name] = {
                    "seconds": round(wall, 3),
                    "tokens_per_second": round(tokens / wall, 1),
                    "cpu_seconds": round(cpu, 3),
                }
            rounds.append(got)
            log.info(
                "bench.embed.round",
                round=i,
                **{k: v for k, v in got.items() if k == "load1"},
                **{k: v["tokens_per_second"] for k, v in got.items() if k != "load1"},
            )
        # Quality: every side's vectors of all texts, from its one-process split, against sentence-transformers'.
        vecs = {}
        for c in configs:
            if c.procs == 1:
                path = tmp / f"{c.side}.npy"
                _send(c.workers[0], f"vec {path}")
                if _read_line(c.workers[0], c.name)[:1] != ["saved"]:
                    raise SwarmError(f"the embed worker for {c.name} did not save its vectors")
                vecs[c.side] = np.load(path)

    def median_tps(name: str) -> float:
        return statistics.median(r[name]["tokens_per_second"] for r in rounds)

    st_names = [c.name for c in configs if c.side == "st"]
    st_best = max(st_names, key=median_tps)
    table = {c.name: round(median_tps(c.name), 1) for c in configs}
    mine_label = f"{mine[0]}x{mine[1]}"
    out = []
    for side, figure in (
        ("Q8_0", "embed_ratio_vs_sentence_transformers"),
        ("f16", "embed_ratio_f16_vs_sentence_transformers"),
    ):
        name = f"{side} {mine_label}"
        per_round = [r[name]["tokens_per_second"] / r[st_best]["tokens_per_second"] for r in rounds]
        cos = float(np.sum(vecs["st"] * vecs[side], axis=1).min())
        splits_text = "; ".join(f"{n} {v:,.0f}" for n, v in table.items())
        notes = (
            f"{len(texts)} stdlib functions, {tokens / len(texts):.0f} tokens on average, {cores} cores; the swarm's "
            f"embedding as a migration runs it ({sw.migrators} migrators x {mine[1]} llama.cpp threads, {side} "
            f"GGUF, flash_attn={e.flash_attn}, micro-batches packing up to {DEFAULT_PACK_TOKENS} tokens) vs "
            f"sentence-transformers' best split ({st_best}; {version('sentence-transformers')}, torch "
            f"{torch.__version__}, fp32, batch {ST_BATCH}); median tokens/s of every split: {splits_text}; "
            f"median of {len(rounds)} rotating rounds (per round {', '.join(f'{x:.3f}' for x in per_round)}); "
            f"cosine to sentence-transformers min {cos:.4f}"
        )
        out.append(
            Result(
                figure,
                median_tps(name),
                "tokens/s",
                Target(">=", 1.5, "ratio"),
                baseline=median_tps(st_best),
                baseline_label=f"sentence-transformers tokens/s ({st_best})",
                ratio=statistics.median(per_round),
                ratio_label=f"llama.cpp {side} {mine_label} / sentence-transformers {st_best.split()[1]}",
                notes=notes,
                details={
                    "texts": len(texts),
                    "tokens": tokens,
                    "cores": cores,
                    "swarm_split": mine_label,
                    "st_best_split": st_best,
                    "median_tokens_per_second": table,
                    "per_round_ratio": [round(x, 4) for x in per_round],
                    "rounds": rounds,
                    "cosine_min_to_st": cos,
                    "st_batch_size": ST_BATCH,
                    "llama_batch_size": e.batch_size,
                    "flash_attn": e.flash_attn,
                },
            )
        )
    return out


def _stop_all(configs: list[Config]) -> None:
    stop_workers([w for c in configs for w in c.workers])
