"""What a GGUF file is, read from its metadata (``gguf.GGUFReader``) without loading the model.

:func:`read_info` is the gate every model path goes through before llama.cpp sees it: a missing, unreadable,
non-GGUF or truncated file, or a GGUF that cannot produce sentence embeddings, fails here with a message that
names the file and the fix, instead of as a C++ abort or a bare "failed to load model" later.
(The module is not called ``inspect`` so as not to shadow the standard library's.)
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gguf
import structlog

from model.download import file_sha256
from model.errors import DimensionMismatch, ModelError

log = structlog.get_logger()

GGUF_MAGIC = b"GGUF"
# numpy's words for a view of too few bytes (GGUFReader on a file that ends early)
_SHORT_READ_MESSAGES = ("must be a divisor of the total size", "not enough values to unpack")

#: ``{arch}.pooling_type`` values (``enum llama_pooling_type``).
POOLING_NAMES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}
#: Poolings that give one vector per text, which is what swarm stores.
SENTENCE_POOLINGS = ("mean", "cls", "last")


@dataclass(frozen=True)
class ModelInfo:
    """The facts about a GGUF that swarm needs before it loads it.

    ``pooling`` is read from ``{arch}.pooling_type``; when the key is absent it is ``"none"``, the value
    llama.cpp then uses (``hparams.pooling_type`` defaults to ``LLAMA_POOLING_TYPE_NONE``), and
    ``pooling_declared`` is False. ``causal`` likewise defaults to True, as in llama.cpp, when
    ``{arch}.attention.causal`` is absent. ``add_bos``/``add_eos`` are ``tokenizer.ggml.add_bos_token`` /
    ``add_eos_token`` as declared, None when absent (llama.cpp then follows its tokenizer type's default). For a
    last-token model they matter: the pooled token is the EOS only when ``add_eos`` is true.
    """

    path: Path
    architecture: str
    n_embd: int
    pooling: str
    context_length: int | None
    file_type: str
    size_bytes: int
    sha256: str
    name: str | None
    causal: bool
    pooling_declared: bool = True
    add_bos: bool | None = None
    add_eos: bool | None = None


_sha_cache: dict[tuple[str, int, int], str] = {}
_info_cache: dict[tuple[str, int, int], ModelInfo] = {}
_cache_lock = threading.Lock()


def sha256_of(path: Path) -> str:
    """The file's SHA-256, computed once per (path, size, mtime) in this process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _cache_lock:
        cached = _sha_cache.get(key)
    if cached is not None:
        return cached
    digest = file_sha256(path)
    with _cache_lock:
        _sha_cache[key] = digest
    return digest


def read_info(path: str | os.PathLike[str]) -> ModelInfo:
    """Read a GGUF's metadata and return its :class:`ModelInfo`.

    Raises :class:`ModelError` when the file is missing, unreadable, not a GGUF, truncated, or carries no
    ``general.architecture`` / ``{arch}.embedding_length``. Tensors are memory-mapped by the reader, not read
    into memory.
    The result is cached per (path, size, mtime) in this process: ``GGUFReader`` walks the whole vocab in
    Python (about a second for BERT's 30k tokens) and the SHA-256 reads every byte.
    """
    p = Path(path)
    try:
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    except OSError:
        key = None
    with _cache_lock:
        cached = _info_cache.get(key) if key else None
    if cached is not None:
        return replace(cached, path=p)
    info = _read_info(p)
    if key is not None:
        with _cache_lock:
            _info_cache[key] = info
    return info


def _read_info(p: Path) -> ModelInfo:
    try:
        st = p.stat()
        if stat.S_ISDIR(st.st_mode):
            raise ModelError(str(p), "is a directory, not a GGUF file; give the path of the .gguf file inside it")
        with open(p, "rb") as f:
            head = f.read(8)
    except FileNotFoundError as exc:
        raise ModelError(
            str(p), "no such file; check the path (`python -m swarm model prepare` builds the MiniLM GGUFs)"
        ) from exc
    except OSError as exc:
        raise ModelError(str(p), f"cannot be read ({exc.strerror or exc}); check the path and its permissions") from exc
    size = st.st_size
    if head[:4] != GGUF_MAGIC:
        shown = head[:4] if head else b"(empty file)"
        raise ModelError(
            str(p),
            f"not a GGUF file (it starts with {shown!r}, not b'GGUF'); convert the checkpoint to GGUF first",
        )
    try:
        reader = _Reader(p)
    except _TensorDataError as exc:
        raise ModelError(
            str(p),
            f"truncated GGUF: the file stops at {size} bytes, before the end of its tensor data; "
            "copy or download it again",
        ) from exc
    except (IndexError, ValueError) as exc:
        # GGUFReader slices a memory map: where the file ends early a slice comes back short, and the next
        # view or unpack of it fails. Those failures mean "truncated"; anything else is corruption.
        if isinstance(exc, IndexError) or any(m in str(exc) for m in _SHORT_READ_MESSAGES):
            raise ModelError(
                str(p),
                f"truncated GGUF: the file stops at {size} bytes, before the end of its header; "
                "copy or download it again",
            ) from exc
        raise ModelError(str(p), f"corrupt GGUF ({exc}); copy or download it again") from exc
    except (KeyError, UnicodeDecodeError) as exc:
        raise ModelError(str(p), f"corrupt GGUF ({exc}); copy or download it again") from exc

    fields = reader.fields
    arch = _value(fields, "general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ModelError(str(p), "GGUF has no general.architecture; it is not a model llama.cpp can load")
    n_embd = _value(fields, f"{arch}.embedding_length_out") or _value(fields, f"{arch}.embedding_length")
    if not isinstance(n_embd, int) or n_embd <= 0:
        raise ModelError(
            str(p),
            f"no {arch}.embedding_length in the GGUF, so it cannot produce embeddings; "
            f"use an embedding model (e.g. all-MiniLM-L6-v2, nomic-embed)",
        )
    pooling_raw = _value(fields, f"{arch}.pooling_type")
    pooling = POOLING_NAMES.get(int(pooling_raw), f"unknown({pooling_raw})") if pooling_raw is not None else "none"
    causal_raw = _value(fields, f"{arch}.attention.causal")
    ftype_raw = _value(fields, "general.file_type")
    try:
        file_type = gguf.LlamaFileType(int(ftype_raw)).name if ftype_raw is not None else "unknown"
    except ValueError:
        file_type = f"unknown({ftype_raw})"
    ctx = _value(fields, f"{arch}.context_length")
    add_bos = _value(fields, "tokenizer.ggml.add_bos_token")
    add_eos = _value(fields, "tokenizer.ggml.add_eos_token")
    name = _value(fields, "general.name")
    return ModelInfo(
        path=p,
        architecture=arch,
        n_embd=int(n_embd),
        pooling=pooling,
        context_length=int(ctx) if ctx is not None else None,
        file_type=file_type,
        size_bytes=size,
        sha256=sha256_of(p),
        name=name if isinstance(name, str) else None,
        causal=bool(causal_raw) if causal_raw is not None else True,
        pooling_declared=pooling_raw is not None,
        add_bos=bool(add_bos) if add_bos is not None else None,
        add_eos=bool(add_eos) if add_eos is not None else None,
    )


def check_embedding(info: ModelInfo) -> None:
    """Raise :class:`ModelError` unless llama.cpp pools this model into one vector per text."""
    if info.pooling in SENTENCE_POOLINGS:
        return
    if info.pooling == "rank":
        reason = (
            "is a reranker ({arch}.pooling_type = rank): it scores pairs, it does not embed; use an embedding model"
        )
    elif not info.pooling_declared:
        reason = (
            "declares no {arch}.pooling_type, so llama.cpp pools nothing "
            "(one vector per token, not per text); "
            "use a sentence-embedding GGUF, or convert the model with its pooling (mean/cls/last)"
        )
    else:
        reason = f"has pooling {info.pooling!r}; swarm needs one vector per text (mean, cls or last pooling)"
    raise ModelError(str(info.path), reason.replace("{arch}", info.architecture))


def check_dimension(info: ModelInfo, dimension: int, *, where: str = "[embedding].dimension") -> None:
    """Raise :class:`DimensionMismatch` (both widths and the fix) unless the model is ``dimension`` wide."""
    if info.n_embd != dimension:
        raise DimensionMismatch(str(info.path), dimension, info.n_embd, where)


def format_info(info: ModelInfo) -> str:
    """The human-readable summary ``python -m swarm model inspect PATH`` prints."""
    pooling = info.pooling if info.pooling_declared else f"{info.pooling} (not declared; llama.cpp default)"
    rows = [
        ("path", str(info.path)),
        ("name", info.name or "-"),
        ("architecture", info.architecture),
        ("dimension", str(info.n_embd)),
        ("pooling", pooling),
        ("context", f"{info.context_length} tokens" if info.context_length else "-"),
        ("attention", "causal" if info.causal else "bidirectional"),
        ("add_bos/add_eos", f"{_flag(info.add_bos)} / {_flag(info.add_eos)}"),
        ("file type", info.file_type),
        ("size", f"{info.size_bytes / 1e6:.1f} MB ({info.size_bytes} bytes)"),
        ("sha256", info.sha256),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _flag(value: bool | None) -> str:
    return "not declared" if value is None else str(value).lower()


class _TensorDataError(Exception):
    """The header parsed, but the tensors it lists do not fit in the file."""


class _Reader(gguf.GGUFReader):  # type: ignore[misc]
    """A GGUFReader that tells a short tensor-data section from a short header."""

    def _build_tensors(self, start_offs: int, fields: list[Any]) -> None:
        try:
            super()._build_tensors(start_offs, fields)
        except (IndexError, ValueError) as exc:
            raise _TensorDataError(str(exc)) from exc


def _value(fields: dict[str, Any], key: str) -> Any:
    field = fields.get(key)
    if field is None:
        return None
    value = field.contents()
    if hasattr(value, "item"):
        value = value.item()
    return value
