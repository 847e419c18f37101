"""Fixtures that provide models: the real all-MiniLM-L6-v2 GGUFs, a random-weights twin, reference vectors.

The MiniLM GGUFs are built once by :func:`model.provision.prepare` into the repository's ``model/`` directory
(git-ignored) and reused by later sessions; prepare keeps files that are already valid.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / "model"
REFERENCE_NAME = "all-MiniLM-L6-v2.reference.jsonl"


def reference_dir() -> Path:
    """Where the sentence-transformers reference vectors live (``SWARM_REFERENCE_DIR`` overrides)."""
    override = os.environ.get("SWARM_REFERENCE_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "shared" / "reference"


@pytest.fixture(scope="session")
def minilm_models() -> dict[str, Path]:
    """Both MiniLM GGUFs, by ftype: ``{"f16": path, "q8": path}``."""
    from model.provision import prepare

    (f16, _), (q8, _) = prepare(MODEL_DIR)
    return {"f16": f16, "q8": q8}


@pytest.fixture(scope="session")
def minilm_f16(minilm_models: dict[str, Path]) -> Path:
    """``model/all-MiniLM-L6-v2.f16.gguf``."""
    return minilm_models["f16"]


@pytest.fixture(scope="session")
def minilm_q8(minilm_models: dict[str, Path]) -> Path:
    """``model/all-MiniLM-L6-v2.Q8_0.gguf``."""
    return minilm_models["q8"]


@pytest.fixture(scope="session")
def random_bert_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GGUF with MiniLM's architecture, shapes and vocab but random weights (seed 1234): meaningless."""
    from model.convert import random_bert_gguf as build

    return build(tmp_path_factory.mktemp("random-bert") / "random-bert.f16.gguf", seed=1234)


@pytest.fixture(scope="session")
def reference() -> list[dict[str, Any]]:
    """The reference texts and their sentence-transformers vectors (``text``, ``n_tokens``, ``embedding``)."""
    path = reference_dir() / REFERENCE_NAME
    if not path.is_file():
        pytest.fail(f"{path} is missing; set SWARM_REFERENCE_DIR to the directory that holds {REFERENCE_NAME}")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="session")
def minilm_embedder(minilm_q8: Path) -> Iterator[Any]:
    """A :class:`~model.embedder.LlamaEmbedder` over the Q8_0 MiniLM, shared by the session (stats too)."""
    from model.embedder import LlamaEmbedder

    with LlamaEmbedder(minilm_q8, cache_size=0) as embedder:
        yield embedder


#: The random-weights Qwen2 stand-in for nomic-embed-code (model/qwen2.py): its architecture (qwen2, causal,
#: last-token pooling, GPT-2 byte-level BPE with Qwen2's pre-tokenizer) at its width, 3584 (28 heads / 4 KV heads,
#: a halfvec column), one layer, a 1,024-token vocabulary and a 2,048-token context: a 60 MB file.
QWEN2_DIM = 3584


@pytest.fixture(scope="session")
def qwen2_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``random-qwen2`` 3584 x 1 layer, no EOS appended by the tokenizer (seed 0)."""
    from model.qwen2 import write_qwen2_gguf

    return write_qwen2_gguf(tmp_path_factory.mktemp("qwen2") / "random-qwen2.f16.gguf", n_embd=QWEN2_DIM, ctx=2048)


@pytest.fixture(scope="session")
def qwen2_eos_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same architecture whose tokenizer appends ``<|endoftext|>`` (``add_eos_token = true``): whether the
    real file does is not known here, so both are tested."""
    from model.qwen2 import write_qwen2_gguf

    return write_qwen2_gguf(
        tmp_path_factory.mktemp("qwen2-eos") / "random-qwen2-eos.f16.gguf", n_embd=QWEN2_DIM, ctx=2048, add_eos=True
    )
