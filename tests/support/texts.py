"""The one generator of code-like texts for test tables, the application writer and the Ray scenarios."""

from __future__ import annotations

import random

WORDS = (
    "parse json file return list of lines wrap text width copy tree directory path socket read write "
    "open close buffer encode decode split join sort filter map reduce cache retry timeout"
).split()


def code_text(rng: random.Random, name: str = "f", *, words: tuple[int, int] = (4, 10)) -> str:
    """``def <name>():  # <random words>``: distinct per ``name`` (a row's key) and per call (its words)."""
    return f"def {name}():  # " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(*words)))
