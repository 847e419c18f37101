"""The figures of the fault-injection suite, and the plain-text tables ``make chaos`` prints at the end.

Each scenario appends one :class:`Outcome` (or a :class:`Safeguard` for a safe default) to the session's list;
``pytest_terminal_summary`` in ``conftest.py`` prints them with :func:`render`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Outcome:
    """What one scenario did to one migration, counted from the table itself at the end."""

    scenario: str
    faults: str
    rows_total: int = 0
    rows_embedded: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    rows_lost: int = 0
    rows_twice: int = 0
    rows_stale: int = 0
    outcome: str = ""
    passed: bool | None = None  # None: the test did not reach its verdict (it raised first)

    @property
    def rows_dead(self) -> int:
        return sum(self.dead_letters.values())

    def dead_text(self) -> str:
        if not self.dead_letters:
            return "0"
        reasons = ", ".join(f"{_short(r)} {n}" for r, n in sorted(self.dead_letters.items()))
        return f"{self.rows_dead} ({reasons})"


@dataclass
class Safeguard:
    """One safe default and what was measured."""

    name: str
    measured: str
    passed: bool | None = None


_SHORT = {
    "text is None (NULL)": "NULL",
    "text is empty or whitespace-only": "empty/blank",
    "no tokens to embed (only control or unknown characters)": "no tokens",
}


def _short(reason: str) -> str:
    return _SHORT.get(reason, reason[:24])


def _verdict(passed: bool | None) -> str:
    return {True: "pass", False: "FAIL", None: "ERROR"}[passed]


def _grid(header: list[str], rows: list[list[str]], wrap: dict[int, int]) -> list[str]:
    """A left-aligned text grid; columns in ``wrap`` are wrapped at that width."""
    import textwrap

    cells = [[textwrap.wrap(c, wrap[i]) or [""] if i in wrap else [c] for i, c in enumerate(r)] for r in rows]
    widths = [len(h) for h in header]
    for r in cells:
        for i, lines in enumerate(r):
            widths[i] = max(widths[i], *(len(x) for x in lines))
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    for r in cells:
        for k in range(max(len(c) for c in r)):
            out.append(
                "  ".join((c[k] if k < len(c) else "").ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            )
    return out


def render(outcomes: list[Outcome], safeguards: list[Safeguard]) -> str:
    lines: list[str] = []
    if outcomes:
        header = [
            "scenario",
            "faults injected",
            "total",
            "embedded",
            "dead-lettered",
            "lost",
            "twice",
            "stale",
            "outcome",
            "verdict",
        ]
        rows = [
            [
                o.scenario,
                o.faults,
                str(o.rows_total),
                str(o.rows_embedded),
                o.dead_text(),
                str(o.rows_lost),
                str(o.rows_twice),
                str(o.rows_stale),
                o.outcome,
                _verdict(o.passed),
            ]
            for o in sorted(outcomes, key=lambda o: o.scenario.split(" ", 1)[0])
        ]
        lines += _grid(header, rows, wrap={1: 34, 4: 30, 8: 44})
    if safeguards:
        if lines:
            lines.append("")
        lines += _grid(
            ["safe default", "measured", "verdict"],
            [[s.name, s.measured, _verdict(s.passed)] for s in safeguards],
            wrap={1: 80},
        )
    return "\n".join(lines)
