"""Quantize a GGUF with llama.cpp's own quantizer (``llama_model_quantize``, as llama-cpp-python exposes it).

Using the C++ quantizer rather than ``gguf.quants`` means the file is exactly what ``llama-quantize`` would
write: the same per-tensor choices (1-D tensors and norms stay F32, ...), the same ``general.file_type``.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from model import _llama_log
from model.errors import ModelError

log = structlog.get_logger()

#: The ftypes swarm offers, by the names ``llama-quantize`` uses. Values are ``enum llama_ftype``.
FTYPES: dict[str, int] = {
    "F32": 0,
    "F16": 1,
    "Q4_0": 2,
    "Q4_1": 3,
    "Q8_0": 7,
    "Q5_0": 8,
    "Q5_1": 9,
    "Q2_K": 10,
    "Q3_K_M": 12,
    "Q4_K_M": 15,
    "Q5_K_M": 17,
    "Q6_K": 18,
    "BF16": 32,
}


def quantize(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    ftype: str = "Q8_0",
    *,
    n_threads: int | None = None,
) -> Path:
    """Quantize the GGUF ``src`` into ``dst`` with ``ftype`` (a name from :data:`FTYPES`) and return ``dst``.

    ``dst`` is written under a temporary name next to it and renamed into place when llama.cpp reports
    success, so an interrupted or failed run never leaves a half-written model under the final name.
    Raises :class:`ModelError` if ``src`` is missing, ``ftype`` is unknown, or llama.cpp fails (its error is
    quoted).
    """
    import llama_cpp

    src_path, dst_path = Path(src), Path(dst)
    key = ftype.upper()
    if key not in FTYPES:
        raise ModelError(str(dst_path), f"unknown quantization type {ftype!r}; use one of {', '.join(FTYPES)}")
    if not src_path.is_file():
        raise ModelError(str(src_path), "no such file to quantize")
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst_path.with_name(f".{dst_path.name}.{os.getpid()}.tmp")

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[key]
    params.nthread = n_threads or os.cpu_count() or 1
    with _llama_log.captured() as llama_said:
        status = llama_cpp.llama_model_quantize(str(src_path).encode("utf-8"), str(tmp).encode("utf-8"), params)
    if status != 0:
        tmp.unlink(missing_ok=True)
        said = llama_said.summary() or "no message"
        raise ModelError(str(src_path), f"llama.cpp could not quantize it to {key} ({said})")
    os.replace(tmp, dst_path)
    log.info("model.quantized", src=str(src_path), dst=str(dst_path), ftype=key, bytes=dst_path.stat().st_size)
    return dst_path
