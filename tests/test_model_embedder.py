"""model.embedder: llama.cpp vectors match sentence-transformers', in order, with the promised bookkeeping."""

from __future__ import annotations

import asyncio
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.embedder import EmbeddingAdapter, LlamaEmbedder, UnembeddableText
from swarm.core.errors import ConfigError, DimensionMismatch, ModelError

LONG = " ".join(f"word{i % 50}" for i in range(900))  # about 2,700 WordPiece tokens: far past the context


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize(("which", "floor"), [("f16", 0.999), ("q8", 0.995)])
def test_parity_with_sentence_transformers(
    which: str, floor: float, minilm_models: dict[str, Path], reference: list[dict[str, Any]]
) -> None:
    with LlamaEmbedder(minilm_models[which], cache_size=0) as embedder:
        got = embedder.embed([r["text"] for r in reference])
    want = np.array([r["embedding"] for r in reference], dtype=np.float32)
    cos = cosines(got, want)
    worst = int(np.argmin(cos))
    assert cos.min() >= floor, f"{which}: cosine {cos.min():.5f} for {reference[worst]['text'][:60]!r}"
    assert got.dtype == np.float32 and got.shape == (len(reference), 384)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_input_order_is_kept_across_micro_batches(minilm_f16: Path, reference: list[dict[str, Any]]) -> None:
    """Texts are sorted by length and packed into several micro-batches; rows still come back in input order.

    F16 model: with Q8_0 weights llama.cpp's CPU kernels make a vector depend slightly on its batch mates
    (cos ~0.9995 between a text embedded alone and in a batch).
    """
    texts = [r["text"] for r in reference]
    random.Random(7).shuffle(texts)
    with LlamaEmbedder(minilm_f16, cache_size=0, batch_size=3, batch_tokens=600) as embedder:
        together = embedder.embed(texts)
        assert embedder.stats.batches >= len(texts) // 3
        alone = np.vstack([embedder.embed([t]) for t in texts])
    similarity = together @ alone.T
    assert list(similarity.argmax(axis=1)) == list(range(len(texts)))
    assert np.all(np.diag(similarity) > 0.99999)
    lengths = [len(t) for t in texts]
    assert max(lengths) > 20 * min(lengths)  # the mix really is of short and long texts


def test_text_longer_than_the_context_is_truncated_and_counted(minilm_q8: Path) -> None:
    with LlamaEmbedder(minilm_q8, cache_size=0) as embedder:
        assert embedder.max_tokens == 512
        vectors = embedder.embed([LONG, LONG + " and a different ending", "short"])
        assert embedder.stats.truncated == 2
        assert embedder.stats.tokens == 512 + 512 + 3
    # what lies past the context cannot change the vector
    assert cosines(vectors[:1], vectors[1:2])[0] == pytest.approx(1.0, abs=1e-6)


def test_n_ctx_lowers_the_limit_like_sentence_transformers_max_seq_length(minilm_q8: Path) -> None:
    with (
        LlamaEmbedder(minilm_q8, cache_size=0, n_ctx=256) as short,
        LlamaEmbedder(minilm_q8, cache_size=0) as full,
    ):
        a, b = short.embed([LONG])[0], full.embed([LONG])[0]
        assert (short.max_tokens, short.stats.tokens, full.stats.tokens) == (256, 256, 512)
    assert float(a @ b) < 0.9999


def test_prefixes_are_applied(minilm_q8: Path) -> None:
    text = "how do I wrap text to 70 columns"
    with (
        LlamaEmbedder(minilm_q8, cache_size=0, query_prefix="query: ", document_prefix="passage: ") as e,
        LlamaEmbedder(minilm_q8, cache_size=0) as plain,
    ):
        as_query, as_doc = e.embed([text], query=True)[0], e.embed([text])[0]
        assert float(as_query @ as_doc) < 0.999
        np.testing.assert_allclose(as_query, plain.embed(["query: " + text])[0], atol=1e-6)
        np.testing.assert_allclose(as_doc, plain.embed(["passage: " + text])[0], atol=1e-6)


def test_cache_counts_hits_and_misses(minilm_q8: Path) -> None:
    with LlamaEmbedder(minilm_q8, cache_size=2, query_prefix="q: ") as embedder:
        first = embedder.embed(["alpha", "beta"])
        assert (embedder.stats.cache_hits, embedder.stats.cache_misses) == (0, 2)
        again = embedder.embed(["beta", "alpha", "alpha"])
        assert (embedder.stats.cache_hits, embedder.stats.cache_misses) == (3, 2)
        np.testing.assert_array_equal(again, first[[1, 0, 0]])
        assert embedder.stats.texts == 2  # nothing was recomputed
        embedder.embed(["alpha"], query=True)  # another prefix: another cache entry
        assert embedder.stats.cache_misses == 3
        embedder.embed(["gamma"])  # LRU of 2: "beta" (least recently used) is evicted, "alpha" stays
        embedder.embed(["beta"])
        assert embedder.stats.cache_misses == 5
        embedder.embed(["alpha"], use_cache=False)
        assert (embedder.stats.cache_hits, embedder.stats.cache_misses) == (3, 5)


def test_identical_texts_in_one_call_are_computed_once(minilm_q8: Path) -> None:
    with LlamaEmbedder(minilm_q8, cache_size=0) as embedder:
        vectors = embedder.embed(["same row", "other", "same row"])
        assert embedder.stats.texts == 2
    np.testing.assert_array_equal(vectors[0], vectors[2])


def test_embed_with_cache_and_stream(minilm_f16: Path, reference: list[dict[str, Any]]) -> None:
    texts = [r["text"] for r in reference[:10]]

    async def run(embedder: LlamaEmbedder) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        one = await embedder.embed_with_cache(texts[0])
        two = await embedder.embed_with_cache(texts[0])
        assert (embedder.stats.cache_hits, embedder.stats.cache_misses) == (1, 1)
        streamed = [v async for v in embedder.stream(texts, chunk=4)]
        # stream goes through the cache too
        assert (embedder.stats.cache_hits, embedder.stats.cache_misses) == (2, 10)
        return one, two, streamed

    with LlamaEmbedder(minilm_f16, cache_size=100) as embedder:
        one, two, streamed = asyncio.run(run(embedder))
        np.testing.assert_array_equal(one, two)
        assert isinstance(embedder, EmbeddingAdapter)
        batched = embedder.embed(texts, use_cache=False)
    assert len(streamed) == len(texts)
    assert np.all(cosines(np.vstack(streamed), batched) > 0.99999)


def test_truncate_dim_gives_renormalized_matryoshka_prefixes(minilm_q8: Path) -> None:
    texts = ["first text", "a second, rather different sentence"]
    with (
        LlamaEmbedder(minilm_q8, cache_size=0, truncate_dim=128) as small,
        LlamaEmbedder(minilm_q8, cache_size=0) as full,
    ):
        cut, whole = small.embed(texts), full.embed(texts)
        assert small.dim == 128 and cut.shape == (2, 128)
        assert small.model_id.endswith("/dim=128") and small.model_id != full.model_id
    np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-5)
    expected = whole[:, :128] / np.linalg.norm(whole[:, :128], axis=1, keepdims=True)
    np.testing.assert_allclose(cut, expected, atol=1e-5)


def test_truncate_dim_larger_than_the_model(minilm_q8: Path) -> None:
    with pytest.raises(ConfigError, match=r"truncate_dim = 512: must be between 1 and the model's 384"):
        LlamaEmbedder(minilm_q8, truncate_dim=512)


def test_expected_dim_mismatch_fails_before_loading(minilm_q8: Path) -> None:
    with pytest.raises(DimensionMismatch, match=r"embedding length is 384 but \[embedding\]\.dimension is 768"):
        LlamaEmbedder(minilm_q8, expected_dim=768)


def test_model_errors_come_from_the_file_check(tmp_path: Path) -> None:
    not_gguf = tmp_path / "weights.bin"
    not_gguf.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="not a GGUF file"):
        LlamaEmbedder(not_gguf)
    with pytest.raises(ModelError, match="no such file"):
        LlamaEmbedder(tmp_path / "absent.gguf")


def test_embed_many_reports_unembeddable_rows_and_embeds_the_rest(minilm_q8: Path) -> None:
    rows: list[Any] = ["a real sentence", None, "", "  \n\t", "another one", b"bytes"]
    with LlamaEmbedder(minilm_q8, cache_size=0) as embedder:
        vectors, errors = embedder.embed_many(rows)
        assert errors == [
            None,
            "text is None (NULL)",
            "text is empty or whitespace-only",
            "text is empty or whitespace-only",
            None,
            "expected a string, got bytes",
        ]
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), [1, 0, 0, 0, 1, 0], atol=1e-5)
        np.testing.assert_allclose(vectors[[0, 4]], embedder.embed(["a real sentence", "another one"]), atol=1e-6)

        with pytest.raises(UnembeddableText) as caught:
            embedder.embed(["fine", "   "])
    err = caught.value
    assert isinstance(err, ValueError) and (err.index, err.reason) == (1, "text is empty or whitespace-only")
    assert str(err) == "text #1: text is empty or whitespace-only; skip or fix that row"
    assert str(pickle.loads(pickle.dumps(err))) == str(err)


def test_text_with_no_tokens_is_unembeddable(minilm_q8: Path) -> None:
    with LlamaEmbedder(minilm_q8, cache_size=0) as embedder:
        _, errors = embedder.embed_many(["\x00\x01\x02"])
    assert errors == ["no tokens to embed (only control or unknown characters)"]


def test_stats_count_what_was_embedded(minilm_q8: Path, reference: list[dict[str, Any]]) -> None:
    with LlamaEmbedder(minilm_q8, cache_size=0) as embedder:
        embedder.embed([r["text"] for r in reference])
        stats = embedder.stats.as_dict()
    assert stats["texts"] == len(reference)
    assert stats["tokens"] == sum(r["n_tokens"] for r in reference)
    assert stats["seconds"] > 0 and stats["tokens_per_second"] > 0


def test_closed_embedder_says_so(minilm_q8: Path) -> None:
    embedder = LlamaEmbedder(minilm_q8, cache_size=0)
    embedder.close()
    with pytest.raises(ModelError, match="the embedder was closed; make a new one"):
        embedder.embed(["text"])


def test_random_weights_model_runs_but_means_nothing(
    random_bert_gguf: Path, minilm_q8: Path, reference: list[dict[str, Any]]
) -> None:
    texts = [r["text"] for r in reference]
    with (
        LlamaEmbedder(random_bert_gguf, cache_size=0) as rand,
        LlamaEmbedder(minilm_q8, cache_size=0) as real,
    ):
        noise, good = rand.embed(texts), real.embed(texts)
        assert rand.dim == real.dim == 384
    assert np.all(np.isfinite(noise))
    want = np.array([r["embedding"] for r in reference], dtype=np.float32)
    assert np.all(cosines(good, want) > 0.99)
    assert np.all(np.abs(cosines(noise, want)) < 0.5)
