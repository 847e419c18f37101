"""Small, well-formed Qwen2 GGUFs with random weights: a stand-in for nomic-embed-code in tests and the bench.

nomic-embed-code is a 7B Qwen2 (3584 wide, 28 layers, 28 heads / 4 KV heads) pooled by its last token, run
with causal attention, with a GPT-2 byte-level BPE vocabulary (``tokenizer.ggml.model = "gpt2"``,
``tokenizer.ggml.pre = "qwen2"``). Its 4.4 GB file cannot be fetched here; :func:`write_qwen2_gguf` writes a
file llama.cpp loads through the same code paths (architecture ``qwen2``, the same tensor names, metadata
keys and tokenizer type) but with one or two layers, a small vocabulary and random weights, so it is a few
MB to a few tens of MB.

What is written follows llama.cpp's ``convert_hf_to_gguf.py`` (``Qwen2Model``):

- ``general.architecture = qwen2``; ``qwen2.context_length``, ``embedding_length``, ``block_count``,
  ``feed_forward_length``, ``attention.head_count``, ``attention.head_count_kv``, ``rope.freq_base``,
  ``attention.layer_norm_rms_epsilon``; ``qwen2.pooling_type = 3`` (LAST) and ``qwen2.attention.causal =
  true`` (llama.cpp's default for qwen2, written anyway so ``model inspect`` shows it as declared);
- tensors ``token_embd``, ``blk.N.{attn_norm, attn_q, attn_k, attn_v (weight+bias), attn_output, ffn_norm,
  ffn_gate, ffn_up, ffn_down}``, ``output_norm``; no ``output.weight`` (tied embeddings, as Qwen2-0.5B and
  llama.cpp then reuses ``token_embd``) unless ``tied=False``;
- a byte-level BPE vocabulary: the 256 byte symbols of GPT-2's ``bytes_to_unicode`` plus merges learned
  (deterministically, with ``tokenizers``) from a fixed code-like corpus embedded below, then Qwen2's special
  tokens ``<|endoftext|>`` (bos = eos = pad, as in the Qwen2 base models), ``<|im_start|>``, ``<|im_end|>`` as
  CONTROL tokens, then ``[PAD{i}]`` UNUSED tokens up to ``vocab`` (as the converter pads a vocabulary);
  ``add_bos_token = false``; ``add_eos_token`` = ``add_eos`` (whether the real file sets it is not known
  here: both are supported and tested).

:func:`random_qwen2_weights` gives the weights under their Hugging Face names, so the same weights can be
written both as a GGUF (:func:`write_qwen2_gguf_from_weights`) and as a ``transformers`` checkpoint
(:func:`write_qwen2_hf`: ``config.json`` + ``model.safetensors`` + ``tokenizer.json``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

#: The Qwen2 pre-tokenizer regex, as in Qwen2's tokenizer.json (llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN2).
QWEN2_PRETOKENIZER_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
LLAMA_POOLING_TYPE = {"none": 0, "mean": 1, "cls": 2, "last": 3}

# A fixed training text for the merges (code and prose, ASCII); changing it changes every fixture's vocab.
_CORPUS = '''
def binary_search(items, target):
    """Return the index of target in the sorted list items, or -1 if it is absent."""
    lo, hi = 0, len(items) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if items[mid] == target:
            return mid
        if items[mid] < target:
            lo = mid + 1
        else:
            hi = mid - 1
    return -1


class LRUCache:
    """A least-recently-used cache with a fixed capacity."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        value = self.data.pop(key, None)
        if value is not None:
            self.data[key] = value
        return value

    def put(self, key: str, value: bytes) -> None:
        self.data.pop(key, None)
        self.data[key] = value
        while len(self.data) > self.capacity:
            self.data.pop(next(iter(self.data)))


async def fetch_rows(conn, table: str, limit: int = 100) -> list[dict]:
    rows = await conn.fetch(f"SELECT id, content FROM {table} ORDER BY id LIMIT $1", limit)
    return [dict(row) for row in rows]


function debounce(fn, wait) {
  let timer = null;
  return function (...args) {
    clearTimeout(timer);
    timer = setTimeout(() => fn.apply(this, args), wait);
  };
}

const parseQuery = (query) => Object.fromEntries(new URLSearchParams(query));

SELECT id, content, embedding <=> $1 AS distance FROM documents ORDER BY distance LIMIT 10;
CREATE INDEX ON documents USING hnsw (embedding vector_cosine_ops);

fn main() {
    let mut counts = std::collections::HashMap::new();
    for word in std::io::read_to_string(std::io::stdin()).unwrap().split_whitespace() {
        *counts.entry(word.to_string()).or_insert(0) += 1;
    }
    println!("{} distinct words", counts.len());
}

func (s *Server) handleSearch(w http.ResponseWriter, r *http.Request) {
	query := r.URL.Query().Get("q")
	if query == "" {
		http.Error(w, "missing query", http.StatusBadRequest)
		return
	}
	results, err := s.index.Search(r.Context(), query, 10)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	json.NewEncoder(w).Encode(results)
}

The function returns the index of the first element that is not less than the target value.
Represent this query for searching relevant code: how do I read a file line by line in Python?
Sort the list in place, then remove the duplicates while keeping the original order of the elements.
Parse the configuration file, validate every field and report the first error with its line number.
for i in range(10): print(i * i, end=" ")  # squares 0 1 4 9 16 25 36 49 64 81
x = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 2024, 3.14159, 0xFF, 1e-6]
'''


@dataclass
class Qwen2Vocab:
    """A byte-level BPE vocabulary in GGUF form (tokens, types, merges) and its special-token ids."""

    tokens: list[str]
    toktypes: list[int]
    merges: list[str]
    bos_id: int
    eos_id: int
    pad_id: int
    n_bpe: int  # tokens learned by BPE (bytes + merges); specials and pads follow
    specials: dict[str, int] = field(default_factory=dict)

    def hf_tokenizer_json(self, *, add_eos: bool = False) -> str:
        """A ``tokenizers`` tokenizer.json with Qwen2's pre-tokenizer, for checking llama.cpp's tokenization."""
        vocab = {t: i for i, t in enumerate(self.tokens[: self.n_bpe])}
        spec: dict[str, Any] = {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [
                {
                    "id": i,
                    "content": t,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": False,
                    "special": True,
                }
                for t, i in self.specials.items()
            ],
            "normalizer": {"type": "NFC"},
            "pre_tokenizer": {
                "type": "Sequence",
                "pretokenizers": [
                    {
                        "type": "Split",
                        "pattern": {"Regex": QWEN2_PRETOKENIZER_REGEX},
                        "behavior": "Isolated",
                        "invert": False,
                    },
                    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
                ],
            },
            "post_processor": (
                {
                    "type": "TemplateProcessing",
                    "single": [
                        {"Sequence": {"id": "A", "type_id": 0}},
                        {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
                    ],
                    "pair": [
                        {"Sequence": {"id": "A", "type_id": 0}},
                        {"Sequence": {"id": "B", "type_id": 1}},
                        {"SpecialToken": {"id": "<|endoftext|>", "type_id": 1}},
                    ],
                    "special_tokens": {
                        "<|endoftext|>": {"id": "<|endoftext|>", "ids": [self.eos_id], "tokens": ["<|endoftext|>"]}
                    },
                }
                if add_eos
                else {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
            ),
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            "model": {
                "type": "BPE",
                "dropout": None,
                "unk_token": None,
                "continuing_subword_prefix": "",
                "end_of_word_suffix": "",
                "fuse_unk": False,
                "byte_fallback": False,
                "ignore_merges": False,
                "vocab": vocab,
                "merges": [m.split(" ") for m in self.merges],
            },
        }
        return json.dumps(spec, ensure_ascii=False)


@lru_cache(maxsize=8)
def _train_bpe(n_bpe: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(tokens in id order, merges) of a byte-level BPE with at most ``n_bpe`` tokens, learned from _CORPUS."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZER_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=n_bpe,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator([_CORPUS], trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = model["vocab"]
    tokens = tuple(t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]))
    merges = tuple(m if isinstance(m, str) else " ".join(m) for m in model["merges"])
    return tokens, merges


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from the 256 byte values to printable characters (the byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def build_vocab(vocab: int = 1024, *, max_bpe: int = 1024) -> Qwen2Vocab:
    """A Qwen2-style vocabulary of exactly ``vocab`` tokens (BPE tokens, 3 specials, then padding).

    At most ``max_bpe`` BPE tokens are learned (the small corpus gives out before long); the rest of
    ``vocab`` is ``[PAD{i}]`` UNUSED tokens, so a vocabulary as large as Qwen2's 151,936 is possible.
    """
    import gguf

    if vocab < 256 + len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab must be at least {256 + len(SPECIAL_TOKENS) + 1} (256 bytes, specials, merges)")
    n_bpe_target = min(vocab - len(SPECIAL_TOKENS), max_bpe)
    tokens_t, merges_t = _train_bpe(n_bpe_target)
    tokens, merges = list(tokens_t), list(merges_t)
    alphabet = set(bytes_to_unicode().values())
    assert alphabet <= set(tokens), "the BPE vocabulary lacks byte symbols"
    n_bpe = len(tokens)
    toktypes = [int(gguf.TokenType.NORMAL)] * n_bpe
    specials: dict[str, int] = {}
    for s in SPECIAL_TOKENS:
        specials[s] = len(tokens)
        tokens.append(s)
        toktypes.append(int(gguf.TokenType.CONTROL))
    while len(tokens) < vocab:
        tokens.append(f"[PAD{len(tokens)}]")
        toktypes.append(int(gguf.TokenType.UNUSED))
    eot = specials["<|endoftext|>"]
    return Qwen2Vocab(tokens, toktypes, merges, bos_id=eot, eos_id=eot, pad_id=eot, n_bpe=n_bpe, specials=specials)


@dataclass(frozen=True)
class Qwen2Config:
    """The hyper-parameters, named as in a Hugging Face Qwen2 ``config.json``."""

    hidden_size: int = 2304
    num_hidden_layers: int = 1
    num_attention_heads: int = 18
    num_key_value_heads: int = 2
    intermediate_size: int = 512
    vocab_size: int = 1024
    max_position_embeddings: int = 2048
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def hf_config(self, vocab: Qwen2Vocab | None = None) -> dict[str, Any]:
        return {
            "architectures": ["Qwen2Model"],
            "model_type": "qwen2",
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "max_window_layers": self.num_hidden_layers,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "hidden_act": "silu",
            "attention_dropout": 0.0,
            "use_sliding_window": False,
            "sliding_window": None,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": "float32",
            "bos_token_id": vocab.bos_id if vocab else None,
            "eos_token_id": vocab.eos_id if vocab else None,
            "initializer_range": 0.02,
            "use_cache": False,
        }


def check_config(cfg: Qwen2Config) -> None:
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ValueError(f"hidden_size {cfg.hidden_size} is not a multiple of n_head {cfg.num_attention_heads}")
    if cfg.num_attention_heads % cfg.num_key_value_heads:
        raise ValueError(f"n_head {cfg.num_attention_heads} is not a multiple of n_head_kv {cfg.num_key_value_heads}")
    if cfg.head_dim % 2:
        raise ValueError(f"head_dim {cfg.head_dim} must be even for RoPE")


def random_qwen2_weights(cfg: Qwen2Config, seed: int = 0, *, std: float = 0.02) -> dict[str, np.ndarray]:
    """Random float32 weights under Hugging Face ``Qwen2Model`` names (no ``model.`` prefix, no lm_head).

    Linear weights are ``[out, in]`` as in PyTorch; norms are near 1; q/k/v have biases as in Qwen2.
    The same ``(cfg, seed)`` gives the same weights.
    """
    check_config(cfg)
    rng = np.random.default_rng(seed)
    d, kv = cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim

    def normal(*shape: int, scale: float = std) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)

    w: dict[str, np.ndarray] = {"embed_tokens.weight": normal(cfg.vocab_size, d)}
    for i in range(cfg.num_hidden_layers):
        p = f"layers.{i}."
        w[p + "input_layernorm.weight"] = 1.0 + normal(d)
        w[p + "self_attn.q_proj.weight"] = normal(d, d)
        w[p + "self_attn.q_proj.bias"] = normal(d)
        w[p + "self_attn.k_proj.weight"] = normal(kv, d)
        w[p + "self_attn.k_proj.bias"] = normal(kv)
        w[p + "self_attn.v_proj.weight"] = normal(kv, d)
        w[p + "self_attn.v_proj.bias"] = normal(kv)
        w[p + "self_attn.o_proj.weight"] = normal(d, d)
        w[p + "post_attention_layernorm.weight"] = 1.0 + normal(d)
        w[p + "mlp.gate_proj.weight"] = normal(cfg.intermediate_size, d)
        w[p + "mlp.up_proj.weight"] = normal(cfg.intermediate_size, d)
        w[p + "mlp.down_proj.weight"] = normal(d, cfg.intermediate_size)
    w["norm.weight"] = 1.0 + normal(d)
    if not cfg.tie_word_embeddings:
        w["lm_head.weight"] = normal(cfg.vocab_size, d)
    return w


def _gguf_name(hf_name: str, n_layer: int) -> str:
    import gguf

    if hf_name == "lm_head.weight":
        return "output.weight"
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, n_layer)
    out = name_map.get_name("model." + hf_name, try_suffixes=(".weight", ".bias"))
    if out is None:
        raise KeyError(f"no GGUF name for {hf_name!r}")
    return out


def write_qwen2_gguf_from_weights(
    path: str | os.PathLike[str],
    weights: dict[str, np.ndarray],
    cfg: Qwen2Config,
    vocab: Qwen2Vocab,
    *,
    ftype: str = "f16",
    pooling: str | None = "last",
    causal: bool | None = True,
    add_eos: bool = False,
    name: str = "random-qwen2",
) -> Path:
    """Write ``weights`` (HF names, see :func:`random_qwen2_weights`) as a llama.cpp ``qwen2`` GGUF.

    ``ftype``: ``"f16"`` (2-D weights F16, norms and biases F32, as the converter does) or ``"f32"``.
    ``pooling``: ``"last"`` (nomic-embed-code), ``"mean"``, ``"cls"``, ``"none"``, or None (key left out).
    ``causal``: written as ``qwen2.attention.causal``; None leaves the key out (llama.cpp then assumes causal).
    The file is written under a temporary name and renamed into place.
    """
    import gguf

    if ftype not in ("f16", "f32"):
        raise ValueError(f"ftype must be 'f16' or 'f32', not {ftype!r}; quantize afterwards")
    if len(vocab.tokens) != cfg.vocab_size:
        raise ValueError(f"vocab has {len(vocab.tokens)} tokens, cfg.vocab_size is {cfg.vocab_size}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.QWEN2]
    writer = gguf.GGUFWriter(tmp, arch)
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        writer.add_context_length(cfg.max_position_embeddings)
        writer.add_embedding_length(cfg.hidden_size)
        writer.add_block_count(cfg.num_hidden_layers)
        writer.add_feed_forward_length(cfg.intermediate_size)
        writer.add_head_count(cfg.num_attention_heads)
        writer.add_head_count_kv(cfg.num_key_value_heads)
        writer.add_rope_freq_base(cfg.rope_theta)
        writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if ftype == "f16" else gguf.LlamaFileType.ALL_F32)
        if causal is not None:
            writer.add_causal_attention(causal)
        if pooling is not None:
            writer.add_pooling_type(gguf.PoolingType(LLAMA_POOLING_TYPE[pooling]))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("qwen2")
        writer.add_token_list(vocab.tokens)
        writer.add_token_types(vocab.toktypes)
        writer.add_token_merges(vocab.merges)
        writer.add_bos_token_id(vocab.bos_id)
        writer.add_eos_token_id(vocab.eos_id)
        writer.add_pad_token_id(vocab.pad_id)
        writer.add_add_bos_token(False)
        writer.add_add_eos_token(add_eos)

        for hf_name, data in weights.items():
            gname = _gguf_name(hf_name, cfg.num_hidden_layers)
            array = np.ascontiguousarray(data, dtype=np.float32)
            if ftype == "f16" and array.ndim == 2:
                writer.add_tensor(gname, array.astype(np.float16), raw_dtype=gguf.GGMLQuantizationType.F16)
            else:
                writer.add_tensor(gname, array, raw_dtype=gguf.GGMLQuantizationType.F32)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(tmp, out)
    return out


def write_qwen2_hf(
    directory: str | os.PathLike[str],
    weights: dict[str, np.ndarray],
    cfg: Qwen2Config,
    vocab: Qwen2Vocab | None = None,
    *,
    add_eos: bool = False,
) -> Path:
    """Write ``weights`` as a ``transformers`` Qwen2 checkpoint (config.json, model.safetensors, tokenizer.json).

    Names get the ``model.`` prefix of ``Qwen2ForCausalLM`` checkpoints; ``Qwen2Model.from_pretrained``
    strips it. Weights are stored in float32.
    """
    from safetensors.numpy import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        ("model." + k if not k.startswith("lm_head") else k): np.ascontiguousarray(v) for k, v in weights.items()
    }
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg.hf_config(vocab), indent=2) + "\n", encoding="utf-8")
    if vocab is not None:
        (out / "tokenizer.json").write_text(vocab.hf_tokenizer_json(add_eos=add_eos), encoding="utf-8")
    return out


def default_heads(n_embd: int) -> tuple[int, int]:
    """(n_head, n_head_kv) with head_dim 128 where possible (as Qwen2-7B: 3584 → 28/4), else 64."""
    for head_dim in (128, 64, 32):
        if n_embd % head_dim == 0:
            n_head = n_embd // head_dim
            for n_kv in (4, 2, 1):
                if n_head % n_kv == 0 and n_head // n_kv >= 2:
                    return n_head, n_kv
            return n_head, 1
    raise ValueError(f"n_embd {n_embd} is not a multiple of 32")


def write_qwen2_gguf(
    path: str | os.PathLike[str],
    *,
    n_embd: int = 2304,
    n_layer: int = 1,
    n_head: int | None = None,
    n_head_kv: int | None = None,
    n_ff: int = 256,
    vocab: int = 1024,
    seed: int = 0,
    ctx: int = 2048,
    ftype: str = "f16",
    pooling: str | None = "last",
    causal: bool | None = True,
    add_eos: bool = False,
    tied: bool = True,
    rope_theta: float = 1_000_000.0,
    rms_eps: float = 1e-6,
    name: str | None = None,
) -> Path:
    """Write a small random-weight Qwen2 embedding GGUF (causal, last-token pooling) and return its path.

    Defaults: n_embd 2304 with 18 heads of 128 and 2 KV heads (3584 gives 28/4, nomic-embed-code's layout),
    one layer, n_ff 256, a 1024-token vocabulary, context 2048. Size is about
    ``2 * (2*n_embd² + vocab*n_embd + 3*n_embd*n_ff) * n_layer`` bytes in f16: ~28 MB at 2304, ~64 MB at 3584.
    The same arguments give a byte-identical file.
    """
    dh, dkv = default_heads(n_embd)
    cfg = Qwen2Config(
        hidden_size=n_embd,
        num_hidden_layers=n_layer,
        num_attention_heads=n_head or dh,
        num_key_value_heads=n_head_kv or (dkv if n_head is None else next(k for k in (4, 2, 1) if n_head % k == 0)),
        intermediate_size=n_ff,
        vocab_size=vocab,
        max_position_embeddings=ctx,
        rope_theta=rope_theta,
        rms_norm_eps=rms_eps,
        tie_word_embeddings=tied,
    )
    weights = random_qwen2_weights(cfg, seed)
    return write_qwen2_gguf_from_weights(
        path,
        weights,
        cfg,
        build_vocab(vocab),
        ftype=ftype,
        pooling=pooling,
        causal=causal,
        add_eos=add_eos,
        name=name or f"random-qwen2-{n_embd}x{n_layer}-{seed}",
    )
