"""Rehearsal's model: deterministic unit vectors from the text's hash, at almost no cost.

``orchestrate --rehearse`` measures the swarm and the database with it, without paying for the model.
"""

from __future__ import annotations

import hashlib

import numpy as np


class StandInEmbedder:
    model_id = "rehearsal-stand-in"
    document_prefix = ""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.sha256 = "rehearsal"

    def embed_many(
        self, texts: list[str | None], *, truncated: list[int] | None = None
    ) -> tuple[np.ndarray, list[str | None]]:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        errors: list[str | None] = []
        for i, t in enumerate(texts):
            if t is None or not t.strip():
                errors.append("NULL content" if t is None else "empty or whitespace-only content")
                continue
            seed = int.from_bytes(hashlib.blake2b(t.encode("utf-8", "replace"), digest_size=8).digest(), "little")
            v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            out[i] = v / np.linalg.norm(v)
            errors.append(None)
        return out, errors
