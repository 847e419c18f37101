"""model.gguf_info: what a GGUF is, and a clear error for every way a model file can be unusable."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest

from model import gguf_info
from model.gguf_info import check_dimension, check_embedding, format_info, read_info
from swarm.core.errors import DimensionMismatch, ModelError


def tiny_gguf(path: Path, arch: str | None = "bert", **keys: int) -> Path:
    """A few-hundred-byte GGUF with the given ``{arch}.<key>`` values and one small tensor."""
    writer = gguf.GGUFWriter(path, arch or "bert")
    if arch is None:
        # GGUFWriter always writes general.architecture; drop it to model a file without one.
        writer.kv_data[0].pop("general.architecture")
    for key, value in keys.items():
        writer.add_uint32(f"{arch}.{key}", value)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_minilm_info_is_what_the_cli_prints(minilm_f16: Path, minilm_q8: Path) -> None:
    f16, q8 = read_info(minilm_f16), read_info(minilm_q8)
    assert (f16.architecture, f16.n_embd, f16.pooling, f16.causal) == ("bert", 384, "mean", False)
    assert f16.context_length == 512
    assert f16.name == "all-MiniLM-L6-v2"
    assert (f16.file_type, q8.file_type) == ("MOSTLY_F16", "MOSTLY_Q8_0")
    assert f16.size_bytes == minilm_f16.stat().st_size
    assert f16.sha256 == hashlib.sha256(minilm_f16.read_bytes()).hexdigest()
    text = format_info(q8)
    for expected in ("bert", "384", "mean", "MOSTLY_Q8_0", q8.sha256):
        assert expected in text


def test_sha256_is_computed_once_per_file_version(tmp_path: Path, minilm_q8: Path, monkeypatch) -> None:
    """Inspecting a multi-GB model twice must not hash it twice; a changed file is hashed again."""
    copy = tmp_path / "m.gguf"
    shutil.copy(minilm_q8, copy)
    first = read_info(copy).sha256
    calls: list[Path] = []
    real = gguf_info.file_sha256
    monkeypatch.setattr(gguf_info, "file_sha256", lambda p: calls.append(p) or real(p))
    assert read_info(copy).sha256 == first
    assert calls == []
    with open(copy, "ab") as f:
        f.write(b"\0" * 32)  # trailing bytes: still a valid GGUF, but a different file
    assert read_info(copy).sha256 != first
    assert len(calls) == 1


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"nope\.gguf: no such file; check the path"):
        read_info(tmp_path / "nope.gguf")


def test_directory_is_not_a_model_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="is a directory, not a GGUF file"):
        read_info(tmp_path)


def test_unreadable_file(tmp_path: Path) -> None:
    """A path that cannot be opened for reading: a broken symlink loop fails for root too."""
    loop = tmp_path / "loop.gguf"
    os.symlink(loop, loop)
    with pytest.raises(ModelError, match=r"cannot be read \(Too many levels of symbolic links\)"):
        read_info(loop)


@pytest.mark.parametrize(
    ("content", "shown"),
    [(b"PK\x03\x04rest-of-a-zip", "b'PK\\\\x03\\\\x04'"), (b"", "b'\\(empty file\\)'")],
)
def test_not_a_gguf(tmp_path: Path, content: bytes, shown: str) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=f"not a GGUF file \\(it starts with {shown}, not b'GGUF'\\)"):
        read_info(path)


@pytest.mark.parametrize(
    ("cut", "where"),
    [
        (9, "header"),  # inside the version number
        (20, "header"),  # inside the tensor/kv counts
        (10_000, "header"),  # inside the vocab
        (600_000, "header"),  # inside the tensor infos
        (1_400_000, "tensor data"),
        (-1, "tensor data"),  # one byte short
    ],
)
def test_truncated_gguf(tmp_path: Path, minilm_q8: Path, cut: int, where: str) -> None:
    data = minilm_q8.read_bytes()
    short = tmp_path / "cut.gguf"
    short.write_bytes(data[:cut])
    with pytest.raises(
        ModelError,
        match=f"truncated GGUF: the file stops at {short.stat().st_size} bytes, before "
        f"the end of its {where}; copy or download it again",
    ):
        read_info(short)


def test_gguf_without_architecture(tmp_path: Path) -> None:
    path = tiny_gguf(tmp_path / "noarch.gguf", arch=None)
    with pytest.raises(ModelError, match="GGUF has no general.architecture"):
        read_info(path)


def test_gguf_without_embedding_length(tmp_path: Path) -> None:
    path = tiny_gguf(tmp_path / "noembd.gguf", arch="llama", context_length=64)
    with pytest.raises(ModelError, match=r"no llama\.embedding_length in the GGUF, so it cannot produce embeddings"):
        read_info(path)


def test_model_that_declares_no_pooling_cannot_embed_texts(tmp_path: Path) -> None:
    info = read_info(tiny_gguf(tmp_path / "nopool.gguf", arch="llama", embedding_length=8))
    assert (info.pooling, info.pooling_declared, info.causal) == ("none", False, True)
    assert "not declared; llama.cpp default" in format_info(info)
    with pytest.raises(ModelError, match=r"declares no llama\.pooling_type, so llama\.cpp pools nothing"):
        check_embedding(info)


def test_reranker_is_refused(tmp_path: Path) -> None:
    info = read_info(tiny_gguf(tmp_path / "rank.gguf", embedding_length=8, pooling_type=4))
    assert info.pooling == "rank"
    with pytest.raises(ModelError, match=r"is a reranker \(bert\.pooling_type = rank\)"):
        check_embedding(info)


def test_dimension_mismatch_names_both_numbers_and_the_fix(minilm_q8: Path) -> None:
    info = read_info(minilm_q8)
    check_dimension(info, 384)
    with pytest.raises(DimensionMismatch) as caught:
        check_dimension(info, 768)
    err = caught.value
    assert (err.expected, err.actual) == (768, 384)
    assert str(err) == (
        f"{minilm_q8}: embedding length is 384 but [embedding].dimension is 768; "
        "set dimension = 384 or use a 768-dim model"
    )
    assert str(pickle.loads(pickle.dumps(err))) == str(err)  # crosses Ray process boundaries
