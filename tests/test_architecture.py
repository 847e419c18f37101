"""The layering written down in ARCHITECTURE.md, checked on the source: every import between swarm's rooms goes
downward, nothing in the runtime imports the benchmark or the tests, and there is no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Each room and the rooms it may import (besides itself). Lower rooms first.
ALLOWED: dict[str, set[str]] = {
    "swarm.core": set(),
    "model": {"swarm.core"},
    "swarm.store": {"swarm.core"},
    "swarm.migration": {"swarm.core", "swarm.store"},
    "swarm.quality": {"swarm.core", "swarm.store"},
    "swarm.serving": {"swarm.core", "swarm.store", "swarm.migration", "swarm.quality", "model"},
    "swarm.ops": {"swarm.core", "swarm.store", "swarm.migration", "swarm.quality", "model"},
    "agents": {"swarm.core", "swarm.store", "swarm.migration", "swarm.quality", "swarm.serving", "model"},
    "swarm.commands": {
        "swarm.core",
        "swarm.store",
        "swarm.migration",
        "swarm.quality",
        "swarm.serving",
        "swarm.ops",
        "agents",
        "model",
    },
    "swarm.cli": {"swarm.core", "swarm.commands", "swarm.migration", "swarm.ops", "model"},
    "swarm": {"swarm.core", "swarm.commands", "swarm.serving", "swarm.cli", "model"},  # __init__, __main__
}


def room(module: str) -> str | None:
    for r in sorted(ALLOWED, key=len, reverse=True):
        if module == r or module.startswith(r + "."):
            return r
    return None


def imports() -> dict[str, set[str]]:
    """Every runtime module (swarm, agents, model) and the modules it imports, at any depth of the file."""
    out: dict[str, set[str]] = {}
    for top in ("swarm", "agents", "model"):
        for path in (REPO / top).rglob("*.py"):
            mod = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            got: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    got |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    got.add(node.module)
                    got |= {f"{node.module}.{a.name}" for a in node.names}
            out[mod] = got
    return out


def test_every_import_between_rooms_goes_downward() -> None:
    wrong = []
    for mod, names in imports().items():
        src = room(mod)
        assert src is not None, f"{mod} is in no room of ARCHITECTURE.md"
        for name in names:
            if name.split(".")[0] in ("bench", "tests"):
                wrong.append(f"{mod} imports {name} (the runtime never imports the benchmark or the tests)")
                continue
            dst = room(name)
            if dst is not None and dst != src and dst not in ALLOWED[src] and name not in ("swarm",):
                wrong.append(f"{mod} ({src}) imports {name} ({dst})")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_no_import_cycle_between_modules() -> None:
    graph = imports()
    modules = set(graph)
    edges = {m: {n for n in graph[m] if n in modules and n != m} for m in graph}
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        seen[m] = 1
        stack.append(m)
        for n in sorted(edges[m]):
            # A package's __init__ re-exporting its submodules is not a cycle through them.
            if m.startswith(n + ".") or n.startswith(m + "."):
                continue
            if seen.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in seen and (cycle := visit(n)):
                return cycle
        stack.pop()
        seen[m] = 2
        return None

    for m in sorted(modules):
        if m not in seen and (cycle := visit(m)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))
