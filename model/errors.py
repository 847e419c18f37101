"""The errors the model layer raises: a model file that cannot be used, a width that does not match, a text that
cannot be embedded. They derive from :class:`swarm.core.errors.SwarmError`, so the CLI prints them on one line."""

from __future__ import annotations

from swarm.core.errors import ConfigError, DimensionMismatch, ModelError, SwarmError


class UnembeddableText(SwarmError, ValueError):
    """A text that cannot be embedded (``None``, empty, whitespace-only, not a string, no tokens)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"text #{index}: {reason}; skip or fix that row")
        self.args = (index, reason)
        self.index, self.reason = index, reason


__all__ = ["ConfigError", "DimensionMismatch", "ModelError", "SwarmError", "UnembeddableText"]
