"""structlog, configured once per process: at the CLI entry and in every actor's ``__init__``.

Events are key-value pairs (``log.info("batch.committed", shard=3, rows=256)``). A terminal gets the
human-friendly renderer on stderr; otherwise (Ray workers, CI, files) JSON lines. ``SWARM_LOG_FILE`` adds a
JSON file; ``SWARM_LOG_LEVEL`` sets the level (default ``info``; the CLI uses ``warning`` unless ``-v``).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, cast

import structlog

_configured: tuple[str, bool] | None = None


def configure(level: str | None = None, *, json: bool | None = None, **context: Any) -> None:
    """Configure structlog for this process (idempotent) and bind ``context`` (migration, actor, ...)."""
    global _configured
    level = (level or os.environ.get("SWARM_LOG_LEVEL") or "info").lower()
    if json is None:
        json = not sys.stderr.isatty()
    if _configured != (level, json):
        processors: list[Any] = [
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,  # log.exception(...) carries its traceback, JSON included
        ]
        renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
        log_file = os.environ.get("SWARM_LOG_FILE")
        if log_file:
            processors.append(_TeeJSON(log_file))
        structlog.configure(
            processors=[*processors, renderer],
            wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
            logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
            cache_logger_on_first_use=False,
        )
        _configured = (level, json)
    if context:
        structlog.contextvars.bind_contextvars(**context)


class _TeeJSON:
    """A processor that appends each event as a JSON line to a file, then passes it on."""

    def __init__(self, path: str) -> None:
        self._render = structlog.processors.JSONRenderer()
        self._path = path

    def __call__(self, logger: Any, name: str, event: dict[str, Any]) -> dict[str, Any]:
        with open(self._path, "a", encoding="utf-8") as f:
            # str: the renderer serializes with json.dumps (bytes only come from a serializer such as orjson's)
            f.write(cast(str, self._render(logger, name, dict(event))) + "\n")
        return event


def get_logger(**initial: Any) -> Any:
    return structlog.get_logger(**initial)
