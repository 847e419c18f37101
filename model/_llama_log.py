"""Capture what llama.cpp logs while one call runs.

llama.cpp says why a load or a quantization failed only through its log callback (the C calls return a bare
status). llama-cpp-python installs a process-wide callback that prints to stderr; while :func:`captured` is
active ours replaces it, keeps the warnings and errors (so a :class:`~swarm.errors.ModelError` can quote them)
and drops the chatter. The library's callback is put back afterwards.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# enum ggml_log_level as built here (ggml.h): NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5.
# llama_cpp/_logger.py still maps the older numbering (INFO 1 ... ERROR 3), so with verbose=False it prints
# llama.cpp's warnings and hides its errors; we read the levels ourselves.
_LEVEL_WARN = 3
_LEVEL_ERROR = 4
_LEVEL_CONT = 5
_lock = threading.Lock()


@dataclass
class LlamaLog:
    """The warning and error lines llama.cpp logged, in order; ``errors`` holds the error lines alone."""

    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self, limit: int = 2) -> str:
        """The last error lines (else warnings), joined for a one-line message; '' when nothing was said."""
        return "; ".join((self.errors or self.lines)[-limit:])


@contextmanager
def captured() -> Iterator[LlamaLog]:
    """Collect llama.cpp's warnings and errors while the block runs (one block at a time per process)."""
    import llama_cpp
    import llama_cpp._logger as lib_logger

    said = LlamaLog()
    keep = [False]

    @llama_cpp.llama_log_callback  # type: ignore[misc]
    def _callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        if level != _LEVEL_CONT:
            keep[0] = level in (_LEVEL_WARN, _LEVEL_ERROR)
        if keep[0]:
            line = text.decode("utf-8", "replace").strip()
            if line:
                said.lines.append(line)
                if level == _LEVEL_ERROR:
                    said.errors.append(line)

    with _lock:
        llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
        try:
            yield said
        finally:
            llama_cpp.llama_log_set(lib_logger.llama_log_callback, ctypes.c_void_p(0))
