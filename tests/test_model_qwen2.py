"""The target's architecture (qwen2, causal attention, last-token pooling) through the embedder and the CLI.

nomic-embed-code's 4.4 GB file cannot be fetched in CI; ``model/qwen2.py`` writes a GGUF of its architecture and
width with one layer and random weights (tests/fix_models.py). Random weights make the vectors meaningless, so
these tests check what does not depend on training: shapes, pooling, batching, prefixes, truncation.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.embedder import LlamaEmbedder
from model.gguf_info import read_info
from tests.fix_models import QWEN2_DIM, REPO

QUERY_PREFIX = "Represent this query for searching relevant code: "
TEXTS = [
    "def add(a, b):\n    return a + b",
    "SELECT id FROM documents ORDER BY embedding <=> $1 LIMIT 10;",
    "x",
    "class LRU:\n    def get(self, key):\n        return self.data.pop(key, None)\n" * 20,
    "function debounce(fn, wait) { let timer = null; }",
    "Sort the list in place, then remove the duplicates while keeping the original order.",
]


def test_the_file_reads_as_the_target_architecture(qwen2_gguf: Path, qwen2_eos_gguf: Path) -> None:
    info, eos = read_info(qwen2_gguf), read_info(qwen2_eos_gguf)
    assert (info.architecture, info.n_embd, info.pooling, info.causal) == ("qwen2", QWEN2_DIM, "last", True)
    assert (info.add_bos, info.add_eos, eos.add_eos) == (False, False, True)


@pytest.mark.parametrize("which", ["no-eos", "add-eos"])
def test_batched_vectors_equal_one_at_a_time(which: str, qwen2_gguf: Path, qwen2_eos_gguf: Path) -> None:
    """Packed micro-batches (several sequences under one mask) and one text per decode give the same vectors."""
    path = qwen2_gguf if which == "no-eos" else qwen2_eos_gguf
    with LlamaEmbedder(path, cache_size=0, n_threads=2) as e:
        batched = e.embed(TEXTS)
        assert e.stats.batches < len(TEXTS), "nothing was packed: the test would compare single with single"
        single = np.stack([e.embed([t])[0] for t in TEXTS])
        # The last token is the one pooled: texts differing only in their last token get different vectors.
        a, b = e.embed(["def add(a, b): return a + b", "def add(a, b): return a - b"])
    assert batched.shape == (len(TEXTS), QWEN2_DIM)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    cos = np.einsum("ij,ij->i", batched, single)
    assert cos.min() >= 0.999, f"cosines {np.round(cos, 5)}"
    assert a @ b < 0.999


def test_a_sequence_longer_than_a_micro_batch_spans_several(qwen2_gguf: Path) -> None:
    """A causal, last-pooled model keeps a decode's tokens in its KV cache, so a 256-token micro-batch still embeds
    a 540-token text whole; its vector equals the one computed in a single 1,024-token micro-batch."""
    long_text = TEXTS[3]
    with (
        LlamaEmbedder(qwen2_gguf, cache_size=0, n_threads=2, n_ctx=1024, batch_tokens=256) as split,
        LlamaEmbedder(qwen2_gguf, cache_size=0, n_threads=2, n_ctx=1024, batch_tokens=1024) as whole,
    ):
        n = len(split.tokenize(long_text))
        assert split.n_ubatch == 256 < n <= split.max_tokens == 1024 and whole.n_ubatch == 1024
        truncated: list[int] = []
        got, errors = split.embed_many([long_text, TEXTS[0]], truncated=truncated)
        assert errors == [None, None] and truncated == []
        want = whole.embed([long_text, TEXTS[0]])
    cos = np.einsum("ij,ij->i", got, want)
    assert cos.min() >= 0.999, f"cosines {cos}"


def test_max_tokens_truncates_and_keeps_the_eos_last(qwen2_eos_gguf: Path) -> None:
    with LlamaEmbedder(qwen2_eos_gguf, cache_size=0, n_threads=2, n_ctx=64) as e:
        eos = e.tokenize("x")[-1]
        truncated: list[int] = []
        vec, errors = e.embed_many([TEXTS[3], TEXTS[0]], truncated=truncated)
        assert errors == [None, None] and truncated == [0] and e.stats.truncated == 1
        assert e.max_tokens == 64 and e.tokenize(TEXTS[3])[-1] == eos
    assert np.isfinite(vec).all()


def test_query_prefix_applies_to_queries_only(qwen2_gguf: Path) -> None:
    with (
        LlamaEmbedder(qwen2_gguf, cache_size=10, n_threads=2, query_prefix=QUERY_PREFIX) as e,
        LlamaEmbedder(qwen2_gguf, cache_size=0, n_threads=2) as plain,
    ):
        doc, query = e.embed([TEXTS[0]])[0], e.embed([TEXTS[0]], query=True)[0]
        assert doc @ plain.embed([TEXTS[0]])[0] > 0.9999
        assert query @ plain.embed([QUERY_PREFIX + TEXTS[0]])[0] > 0.9999
        assert query @ doc < 0.99
        assert e.embed([TEXTS[0]])[0] @ doc > 0.9999, "the cache mixed a query with its document"


def test_the_target_config_runs_on_the_fixture(qwen2_gguf: Path) -> None:
    """configs/nomic-embed-code.toml as shipped (dimension, prefixes, batch size, max_tokens), only its model_path
    pointed at the fixture: the factory builds the embedder the migrators and the router use."""
    from model.factory import embedder_for
    from swarm.core.config import load_config

    shipped = load_config(REPO / "configs/nomic-embed-code.toml")
    cfg = load_config(REPO / "configs/nomic-embed-code.toml", embedding={"model_path": str(qwen2_gguf)})
    assert cfg.embedding.model_dump(exclude={"model_path"}) == shipped.embedding.model_dump(exclude={"model_path"})
    with embedder_for(cfg, "new", n_threads=2) as e:
        assert (e.dim, e.query_prefix, e.n_gpu_layers) == (3584, QUERY_PREFIX, 0)
        assert e.max_tokens == cfg.embedding.max_tokens
        q, d = e.embed(["read a file line by line"], query=True)[0], e.embed(["read a file line by line"])[0]
    assert q @ d < 0.99


@pytest.mark.parametrize("cmd", ["inspect", "embed"])
def test_cli_inspects_and_embeds_it(qwen2_eos_gguf: Path, cmd: str) -> None:
    args = ["inspect", str(qwen2_eos_gguf), "--json"] if cmd == "inspect" else ["embed", "--model", str(qwen2_eos_gguf)]
    p = subprocess.run(
        [sys.executable, "-m", "swarm", "model", *args],
        cwd=REPO,
        input="hello\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    if cmd == "inspect":
        got = json.loads(p.stdout)
        assert (got["architecture"], got["pooling"], got["add_eos"]) == ("qwen2", "last", True)
    else:
        assert len(json.loads(p.stdout.splitlines()[0])) == QWEN2_DIM
