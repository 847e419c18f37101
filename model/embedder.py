"""Turn texts into unit vectors with a GGUF model run by llama.cpp.

:class:`EmbeddingAdapter` is the interface the migrator and the validator use; :class:`LlamaEmbedder`
implements it with llama-cpp-python's low-level API. It does its own batching instead of calling
``Llama.embed()``:

- every text is tokenized once, truncated to the model's context (keeping the closing ``[SEP]``/EOS token) and
  counted in :attr:`EmbedStats.truncated`;
- texts are sorted by token length and packed into micro-batches bounded by ``n_ubatch`` tokens and by the
  number of sequences a context holds. A non-causal model (BERT) must see each sequence whole in one ubatch
  (llama.cpp aborts the process otherwise), so ``n_ubatch = n_batch`` and no sequence is longer than that.
  A causal model pooled by its last token (Qwen2, nomic-embed-code) keeps the tokens of a decode in its KV
  cache, so a sequence may span micro-batches: ``n_ubatch`` stays at the micro-batch size (it sizes the compute
  buffers, and llama.cpp's logits buffer, which grow with it) while ``n_batch`` (= ``n_ctx``, the KV cache)
  bounds a sequence; llama.cpp's LAST pooling reads the sequence's last token from the micro-batch holding it;
- each sequence's pooled vector is read with ``llama_get_embeddings_seq``, L2-normalized, optionally cut to a
  Matryoshka ``truncate_dim`` (and normalized again), and returned in input order.

Rows that cannot be embedded (``None``, empty or whitespace-only) are reported by
:meth:`LlamaEmbedder.embed_many` with a reason and a zero row, so a migrator can dead-letter them and go on;
:meth:`LlamaEmbedder.embed` raises :class:`UnembeddableText` for them instead.
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import structlog

from model import _llama_log
from model.errors import ConfigError, DimensionMismatch, ModelError, UnembeddableText
from model.gguf_info import ModelInfo, check_embedding, read_info

log = structlog.get_logger()

_DECODE_STATUS = {1: "no room in the KV cache for the batch", 2: "aborted", -1: "invalid input batch"}
_POOLING_ENUM = {"none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}

#: Default micro-batch size in tokens (n_batch = n_ubatch), with and without flash attention. llama.cpp packs
#: several sequences into one micro-batch under a mask spanning all of them, so attention cost grows with the
#: square of the micro-batch. Measured on a quiet 2-core machine (load < 2), all-MiniLM-L6-v2 Q8_0, 2 threads,
#: 80 stdlib functions of ~210 tokens, flash attention on: 1,678 tokens/s at 2048 (32 texts), 2,233 at 1024
#: (4 texts), 2,730-3,010 at 512 (2 to 32 texts), 3,425 at 512 with one text per micro-batch. (An earlier
#: measurement that favored 2048 was taken at load average 14 and did not hold up.) 512 also keeps the
#: compute buffers, and so the migrator's memory, small.
DEFAULT_BATCH_TOKENS = 512
#: How many tokens of several sequences one micro-batch may pack (the mask spans all of them, so packing less
#: wastes less attention; packing nothing pays llama.cpp's per-decode cost for every text). Measured on a quiet
#: machine, MiniLM Q8_0, 2 threads, tokens/s for 80 functions of ~210 tokens / 150 corpus functions of mixed
#: length: 512 → 2,721 / 2,567; 384 → 3,025 / 3,017; 256 → 3,077 / 3,143; 128 → 2,870 / 2,590.
DEFAULT_PACK_TOKENS = 256
DEFAULT_BATCH_TOKENS_NO_FLASH = 512


@dataclass
class EmbedStats:
    """Counters since the embedder was made (or since :meth:`reset`). ``seconds`` is time spent embedding."""

    texts: int = 0
    tokens: int = 0
    truncated: int = 0
    seconds: float = 0.0
    cache_hits: int = 0
    cache_misses: int = 0
    batches: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def reset(self) -> None:
        for name in asdict(self):
            setattr(self, name, type(getattr(self, name))())

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "tokens_per_second": round(self.tokens_per_second, 1)}


@runtime_checkable
class EmbeddingAdapter(Protocol):
    """What swarm needs from an embedding model: float32 unit rows, ``dim`` wide, in input order."""

    @property
    def dim(self) -> int: ...

    @property
    def model_id(self) -> str: ...

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        """Embed ``texts`` (documents, or queries with ``query=True``) into an ``(n, dim)`` float32 array."""
        ...

    async def embed_with_cache(self, text: str, *, query: bool = False) -> np.ndarray:
        """Embed one text, answering from the LRU cache when the same text was embedded before."""
        ...

    def stream(self, texts: Sequence[str], *, query: bool = False) -> AsyncIterator[np.ndarray]:
        """Yield the vectors of ``texts`` one by one, in order, computing them batch by batch."""
        ...


class _LRU:
    """A thread-safe least-recently-used map from cache keys to read-only vectors."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[tuple[str, str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str, str]) -> np.ndarray | None:
        with self._lock:
            vec = self._data.get(key)
            if vec is not None:
                self._data.move_to_end(key)
            return vec

    def put(self, key: tuple[str, str, str], vec: np.ndarray) -> None:
        if self.size <= 0:
            return
        vec = vec.copy()
        vec.flags.writeable = False
        with self._lock:
            self._data[key] = vec
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class LlamaEmbedder:
    """An :class:`EmbeddingAdapter` over a GGUF embedding model run by llama.cpp on the CPU.

    The file is checked with :func:`~model.gguf_info.read_info` before llama.cpp loads it, so a wrong path,
    a non-embedding model or a width that differs from ``expected_dim`` fails with a clear error at once.
    ``n_embd`` and the pooling come from the GGUF. ``document_prefix``/``query_prefix`` are prepended to texts
    (e.g. ``"search_document: "`` for nomic-embed). ``batch_size`` caps the sequences per micro-batch and
    ``batch_tokens`` its tokens; ``n_ctx`` lowers the per-text token limit below the model's context (256
    gives sentence-transformers' truncation for all-MiniLM-L6-v2). ``truncate_dim`` keeps the first dimensions
    of a Matryoshka model. ``n_gpu_layers`` offloads that many layers (-1: all) to the GPU backend llama.cpp
    was built with (a build without one runs them on the CPU: :func:`require_gpu_backend` checks first). Calls
    from several threads (or the async methods' worker threads) take turns on one lock: there is one llama.cpp
    context.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        document_prefix: str = "",
        query_prefix: str = "",
        cache_size: int = 10000,
        batch_size: int = 32,
        n_threads: int | None = None,
        n_ctx: int | None = None,
        truncate_dim: int | None = None,
        flash_attn: bool = True,
        expected_dim: int | None = None,
        batch_tokens: int | None = None,
        n_gpu_layers: int = 0,
    ) -> None:
        self.info: ModelInfo = read_info(path)
        check_embedding(self.info)
        info = self.info
        if truncate_dim is not None and not 0 < truncate_dim <= info.n_embd:
            raise ConfigError("truncate_dim", truncate_dim, f"must be between 1 and the model's {info.n_embd}")
        self._dim = truncate_dim or info.n_embd
        if expected_dim is not None and expected_dim != self._dim:
            raise DimensionMismatch(str(info.path), expected_dim, self._dim)
        if batch_size < 1:
            raise ConfigError("batch_size", batch_size, "must be at least 1")
        if n_ctx is not None and n_ctx < 8:
            raise ConfigError("n_ctx", n_ctx, "must be at least 8 tokens")

        import llama_cpp

        self._lib = llama_cpp
        trained = info.context_length or n_ctx or 512
        self.max_tokens = min(n_ctx or trained, trained)
        # llama.cpp pads n_ctx to a multiple of 256; an n_batch that is not one too aborts the process in
        # ggml_can_mul_mat while the context reserves its graph (seen with 513 and 600), so round up.
        default_tokens = DEFAULT_BATCH_TOKENS if flash_attn else DEFAULT_BATCH_TOKENS_NO_FLASH
        n_batch = -(-max(batch_tokens or default_tokens, self.max_tokens) // 256) * 256
        # See the module docstring: only a causal, last-token model may see a sequence split across
        # micro-batches (MEAN or CLS over a split sequence would pool one micro-batch's part of it).
        self.splits_sequences = info.causal and info.pooling == "last"
        n_ubatch = n_batch
        if self.splits_sequences:
            n_ubatch = min(n_batch, -(-(batch_tokens or default_tokens) // 256) * 256)
        self.n_threads = n_threads or os.cpu_count() or 1
        self.document_prefix, self.query_prefix = document_prefix, query_prefix
        self.truncate_dim = truncate_dim
        self.flash_attn = flash_attn
        self.n_gpu_layers = n_gpu_layers
        self.stats = EmbedStats()
        self._cache = _LRU(cache_size)
        self._long: set[bytes] = set()  # digests of texts found longer than the context (few, 16 bytes each)
        self._lock = threading.Lock()
        self._closed = False
        self._batch: Any = None  # a llama_batch over the numpy arrays below (they own its memory)

        with _llama_log.captured() as said:
            try:
                # Llama clamps n_batch to n_ctx; for an encoder n_ctx only bounds the batch (there is no KV
                # cache), for a causal model it is the unified KV cache the batch's sequences share.
                self._llm = llama_cpp.Llama(
                    model_path=str(info.path),
                    embedding=True,
                    pooling_type=_POOLING_ENUM[info.pooling],
                    n_ctx=n_batch,
                    n_batch=n_batch,
                    n_ubatch=n_ubatch,
                    n_gpu_layers=n_gpu_layers,
                    n_threads=self.n_threads,
                    n_threads_batch=self.n_threads,
                    flash_attn=flash_attn,
                    verbose=False,
                )
            except (ValueError, RuntimeError) as exc:
                reason = said.summary() or str(exc)
                raise ModelError(str(info.path), f"llama.cpp could not load it ({reason})") from exc
        ctx = self._llm.ctx
        self.n_batch = llama_cpp.llama_n_batch(ctx)
        self.n_ubatch = llama_cpp.llama_n_ubatch(ctx)
        self.n_seq_max = min(batch_size, llama_cpp.llama_n_seq_max(ctx))
        self.max_tokens = min(self.max_tokens, self.n_batch if self.splits_sequences else self.n_ubatch)
        #: Sequences are packed into one micro-batch while their tokens fit in this many (a longer sequence
        #: still goes alone, up to n_ubatch): see DEFAULT_PACK_TOKENS.
        self.pack_tokens = min(DEFAULT_PACK_TOKENS, self.n_ubatch)
        self.n_embd = llama_cpp.llama_model_n_embd_out(self._llm.model)
        if self.n_embd != info.n_embd:
            raise ModelError(str(info.path), f"llama.cpp reports {self.n_embd} dimensions, the GGUF {info.n_embd}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        self._memory = llama_cpp.llama_get_memory(ctx)
        self._batch = self._numpy_batch(self.n_batch)
        self._tokbuf = (llama_cpp.llama_token * (self.max_tokens * 4))()
        self._head, self._tail = self._special_layout()
        self.sha256 = info.sha256
        log.info(
            "embedder.loaded",
            path=str(info.path),
            arch=info.architecture,
            dim=self._dim,
            pooling=info.pooling,
            max_tokens=self.max_tokens,
            n_batch=self.n_batch,
            n_ubatch=self.n_ubatch,
            n_seq_max=self.n_seq_max,
            n_gpu_layers=n_gpu_layers,
            n_threads=self.n_threads,
            flash_attn=flash_attn,
        )

    # -- the interface -------------------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        """Width of the returned vectors (``truncate_dim`` if set, else the model's ``n_embd``)."""
        return self._dim

    @property
    def model_id(self) -> str:
        """Identifies the vectors' origin: file name, content hash, and truncation if any."""
        base = f"{self.info.path.name}@sha256:{self.sha256[:16]}"
        return f"{base}/dim={self.truncate_dim}" if self.truncate_dim else base

    def embed(self, texts: Sequence[str], *, query: bool = False, use_cache: bool | None = None) -> np.ndarray:
        """Embed ``texts`` into an ``(n, dim)`` float32 array of unit vectors, in input order.

        Raises :class:`UnembeddableText` (a ``ValueError``) for the first text that cannot be embedded, before
        any work is done. ``use_cache`` (default: on when ``cache_size > 0``) answers repeated texts from the
        LRU cache.
        """
        for i, text in enumerate(texts):
            reason = _unembeddable(text)
            if reason:
                raise UnembeddableText(i, reason)
        vectors, errors = self.embed_many(texts, query=query, use_cache=use_cache)
        for i, reason in enumerate(errors):
            if reason:
                raise UnembeddableText(i, reason)
        return vectors

    def embed_many(
        self,
        texts: Sequence[str | None],
        *,
        query: bool = False,
        use_cache: bool | None = None,
        truncated: list[int] | None = None,
    ) -> tuple[np.ndarray, list[str | None]]:
        """Embed what can be embedded; return the vectors and, per row, ``None`` or why it was skipped.

        Skipped rows are zero vectors. Identical texts in one call are computed once. ``use_cache`` defaults
        to on when the embedder has a cache (``cache_size > 0``). The indices of rows whose text was longer than
        the model's context (embedded from its first ``max_tokens`` tokens) are appended to ``truncated``,
        cache hits included.
        """
        if use_cache is None:
            use_cache = self._cache.size > 0
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        errors: list[str | None] = [None] * len(texts)
        prefix = self.query_prefix if query else self.document_prefix
        pending: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            reason = _unembeddable(text)
            if reason:
                errors[i] = reason
                continue
            assert isinstance(text, str)
            if use_cache:
                hit = self._cache.get((self.sha256, prefix, text))
                if hit is not None:
                    out[i] = hit
                    self.stats.cache_hits += 1
                    if truncated is not None and _text_key(prefix + text) in self._long:
                        truncated.append(i)
                    continue
                self.stats.cache_misses += 1
            pending.setdefault(text, []).append(i)
        if not pending:
            return out, errors

        unique = list(pending)
        with self._lock:
            self._check_open()
            started = time.perf_counter()
            vectors, failed, long = self._compute([prefix + t for t in unique])
            self.stats.seconds += time.perf_counter() - started
        for j, text in enumerate(unique):
            rows = pending[text]
            if j in failed:
                for i in rows:
                    errors[i] = failed[j]
                continue
            out[rows] = vectors[j]
            if j in long and truncated is not None:
                truncated.extend(rows)
            if use_cache:
                self._cache.put((self.sha256, prefix, text), vectors[j])
        return out, errors

    async def embed_with_cache(self, text: str, *, query: bool = False) -> np.ndarray:
        """Embed one text; a text seen before (same model and prefix) is answered from the cache."""
        prefix = self.query_prefix if query else self.document_prefix
        if isinstance(text, str):
            hit = self._cache.get((self.sha256, prefix, text))
            if hit is not None:
                self.stats.cache_hits += 1
                return hit.copy()
        vectors = await asyncio.to_thread(self.embed, [text], query=query, use_cache=True)
        return vectors[0]

    async def stream(
        self, texts: Sequence[str], *, query: bool = False, chunk: int | None = None
    ) -> AsyncIterator[np.ndarray]:
        """Yield one vector per text, in order; each chunk of texts is embedded in a worker thread."""
        step = chunk or self.n_seq_max * 4
        for start in range(0, len(texts), step):
            part = texts[start : start + step]
            try:
                vectors = await asyncio.to_thread(self.embed, part, query=query)
            except UnembeddableText as exc:
                raise UnembeddableText(start + exc.index, exc.reason) from None
            for row in vectors:
                yield row

    @property
    def cache_enabled(self) -> bool:
        return self._cache.size > 0

    def cached(self, text: str, *, query: bool = False) -> tuple[np.ndarray, bool] | None:
        """The cached vector of ``text`` and whether it was truncated, or None (no counters touched)."""
        prefix = self.query_prefix if query else self.document_prefix
        vec = self._cache.get((self.sha256, prefix, text))
        return None if vec is None else (vec, _text_key(prefix + text) in self._long)

    def remember(self, text: str, vec: np.ndarray, truncated: bool = False, *, query: bool = False) -> None:
        """Put a vector computed elsewhere (another migrator, same model) into this embedder's cache."""
        prefix = self.query_prefix if query else self.document_prefix
        self._cache.put((self.sha256, prefix, text), vec)
        if truncated:
            self._long.add(_text_key(prefix + text))

    def tokenize(self, text: str) -> list[int]:
        """The model's tokens for ``text``, with its special tokens (``[CLS] ... [SEP]`` for BERT)."""
        with self._lock:
            self._check_open()
            return self._tokenize(text)

    def close(self) -> None:
        """Free the llama.cpp context, model and batch (also done when the object is collected)."""
        if self._closed:
            return
        self._closed = True
        self._batch = None  # its arrays are numpy's, freed with this object
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.close()

    def __enter__(self) -> LlamaEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 (interpreter shutdown: nothing useful left to do)
            pass

    # -- the work ------------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ModelError(str(self.info.path), "the embedder was closed; make a new one")

    def _tokenize(self, text: str) -> list[int]:
        data = text.encode("utf-8", "replace")
        lib = self._lib
        n = lib.llama_tokenize(self._vocab, data, len(data), self._tokbuf, len(self._tokbuf), True, False)
        if n >= 0:
            return list(self._tokbuf[:n])
        buf = (lib.llama_token * -n)()
        n = lib.llama_tokenize(self._vocab, data, len(data), buf, len(buf), True, False)
        if n < 0:
            raise ModelError(str(self.info.path), f"llama.cpp could not tokenize a {len(data)}-byte text")
        return list(buf[:n])

    def _special_layout(self) -> tuple[int, int]:
        """How many special tokens the tokenizer puts before and after a text (1 and 1 for BERT)."""
        lib = self._lib
        probe = b"hello"
        buf = (lib.llama_token * 64)()
        n_with = lib.llama_tokenize(self._vocab, probe, len(probe), buf, 64, True, False)
        with_special = list(buf[:n_with])
        n_plain = lib.llama_tokenize(self._vocab, probe, len(probe), buf, 64, False, False)
        plain = list(buf[:n_plain])
        for head in range(len(with_special) - len(plain) + 1):
            if with_special[head : head + len(plain)] == plain:
                return head, len(with_special) - head - len(plain)
        return 0, 0

    def _compute(self, texts: list[str]) -> tuple[np.ndarray, dict[int, str], set[int]]:
        """Vectors for ``texts`` (already prefixed), in order; failures by index; indices truncated."""
        failed: dict[int, str] = {}
        long: set[int] = set()
        seqs: list[tuple[int, list[int]]] = []
        for j, text in enumerate(texts):
            tokens = self._tokenize(text)
            if len(tokens) <= self._head + self._tail:
                failed[j] = "no tokens to embed (only control or unknown characters)"
                continue
            if len(tokens) > self.max_tokens:
                keep = self.max_tokens - self._tail
                tokens = tokens[:keep] + (tokens[-self._tail :] if self._tail else [])
                self.stats.truncated += 1
                long.add(j)
                self._long.add(_text_key(text))
            seqs.append((j, tokens))
        vectors = np.zeros((len(texts), self._dim), dtype=np.float32)
        seqs.sort(key=lambda s: len(s[1]), reverse=True)
        batch: list[tuple[int, list[int]]] = []
        used = 0
        for item in seqs:
            if batch and (used + len(item[1]) > self.pack_tokens or len(batch) >= self.n_seq_max):
                self._decode(batch, vectors)
                batch, used = [], 0
            batch.append(item)
            used += len(item[1])
        if batch:
            self._decode(batch, vectors)
        self.stats.texts += len(seqs)
        return vectors, failed, long

    def _numpy_batch(self, size: int) -> Any:
        """A ``llama_batch`` of ``size`` tokens whose arrays are numpy arrays kept on this object, so a decode
        fills them with a few slice copies instead of five ctypes stores per token (~5 µs per token in Python).
        Every token has one sequence id and is an output (embeddings need each token's state)."""
        lib = self._lib
        self._b_token = np.zeros(size, dtype=np.int32)
        self._b_pos = np.zeros(size, dtype=np.int32)
        self._b_seq = np.zeros(size, dtype=np.int32)
        self._b_n_seq = np.ones(size, dtype=np.int32)
        self._b_logits = np.ones(size, dtype=np.int8)
        self._b_arange = np.arange(size, dtype=np.int32)
        seq_p = ctypes.POINTER(lib.llama_seq_id)
        base, width = self._b_seq.ctypes.data, self._b_seq.itemsize
        self._b_seq_ptrs = (seq_p * size)(*(ctypes.cast(base + width * i, seq_p) for i in range(size)))
        b = lib.llama_batch()
        b.n_tokens = 0
        b.token = self._b_token.ctypes.data_as(ctypes.POINTER(lib.llama_token))
        b.embd = None
        b.pos = self._b_pos.ctypes.data_as(ctypes.POINTER(lib.llama_pos))
        b.n_seq_id = self._b_n_seq.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        b.seq_id = self._b_seq_ptrs
        b.logits = self._b_logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        return b

    def _decode(self, batch: list[tuple[int, list[int]]], vectors: np.ndarray) -> None:
        lib, b = self._lib, self._batch
        n = 0
        for seq, (_, tokens) in enumerate(batch):
            m = len(tokens)
            self._b_token[n : n + m] = tokens
            self._b_pos[n : n + m] = self._b_arange[:m]
            self._b_seq[n : n + m] = seq
            n += m
        b.n_tokens = n
        if self._memory is not None:
            lib.llama_memory_clear(self._memory, True)
        status = lib.llama_decode(self._llm.ctx, b)
        if status != 0:
            raise ModelError(
                str(self.info.path),
                f"llama_decode failed with status {status} ({_DECODE_STATUS.get(status, 'fatal error')})",
            )
        ctx, n_embd, dim = self._llm.ctx, self.n_embd, self._dim
        for seq, (j, _) in enumerate(batch):
            ptr = lib.llama_get_embeddings_seq(ctx, seq)
            if not ptr:
                raise ModelError(str(self.info.path), f"llama.cpp returned no pooled embedding for sequence {seq}")
            vec = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(n_embd,))
            vec = vec[:dim].astype(np.float32)
            norm = float(np.linalg.norm(vec))
            vectors[j] = vec / norm if norm > 0 else vec
        self.stats.tokens += n
        self.stats.batches += 1


#: How to get a llama-cpp-python with each GPU backend (the wheel on PyPI is built for the CPU only).
GPU_BUILDS = {
    "cuda": 'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python==0.3.36',
    "metal": 'CMAKE_ARGS="-DGGML_METAL=on" pip install --force-reinstall --no-cache-dir llama-cpp-python==0.3.36',
}


def gpu_offload_supported() -> bool:
    """Whether this process's llama.cpp was built with a GPU backend (CUDA, Metal, ...)."""
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def require_gpu_backend(device: str) -> None:
    """Raise :class:`ConfigError` (one line: how to install the GPU build) unless llama.cpp can offload here."""
    if not gpu_offload_supported():
        how = GPU_BUILDS.get(device, GPU_BUILDS["cuda"])
        raise ConfigError(
            "embedding.device",
            device,
            f"this llama-cpp-python has no GPU backend (llama_supports_gpu_offload() is false); install the "
            f"{device.upper() if device == 'cuda' else device.capitalize()} build: {how}",
        )


def _text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def unembeddable(text: object) -> str | None:
    """Why ``text`` cannot be embedded (``None``, not a string, empty, whitespace-only), or None."""
    return _unembeddable(text)


def _unembeddable(text: object) -> str | None:
    """Why ``text`` cannot be embedded, or ``None`` if it can."""
    if text is None:
        return "text is None (NULL)"
    if not isinstance(text, str):
        return f"expected a string, got {type(text).__name__}"
    if not text.strip():
        return "text is empty or whitespace-only"
    return None
