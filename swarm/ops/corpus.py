"""The demo corpus: real code from the running interpreter's standard library, CodeSearchNet-style.

Each function that has a docstring becomes one document (its source without the docstring) and one candidate
query (the docstring's first sentence), whose one relevant document is that function.
"""

from __future__ import annotations

import ast
import hashlib
import re
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Packages whose functions are tests, generated tables or duplicates of others.
_SKIP_DIRS = {
    "test",
    "tests",
    "idle_test",
    "site-packages",
    "lib2to3",
    "__pycache__",
    "turtledemo",
    "ensurepip",
}
_SENTENCE = re.compile(r"^(.+?[.!?])(\s|$)", re.S)


@dataclass(frozen=True)
class Function:
    id: int
    name: str  # module.qualname
    content: str  # source without the docstring
    query: str  # first sentence of the docstring


def _first_sentence(doc: str) -> str:
    para = doc.strip().split("\n\n", 1)[0]
    para = " ".join(para.split())
    m = _SENTENCE.match(para)
    return (m.group(1) if m else para).strip()


def _strip_docstring(src_lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    doc_node = node.body[0]
    assert node.end_lineno is not None and doc_node.end_lineno is not None
    start = node.lineno - 1
    if node.decorator_list:
        start = node.decorator_list[0].lineno - 1
    lines = src_lines[start : node.end_lineno]
    rel_s = doc_node.lineno - 1 - start
    rel_e = doc_node.end_lineno - start
    body = lines[:rel_s] + lines[rel_e:]
    if len(node.body) == 1:
        return None  # only a docstring: nothing to search for
    indent = min((len(x) - len(x.lstrip()) for x in body if x.strip()), default=0)
    text = "\n".join(x[indent:] for x in body).strip("\n")
    return text


def _module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def iter_functions(stdlib: Path | None = None, max_chars: int = 6000) -> Iterator[tuple[str, str, str]]:
    """(qualified name, source without docstring, first docstring sentence) in a stable order."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not (set(p.relative_to(root).parts[:-1]) & _SKIP_DIRS))
    for path in files:
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        lines = source.splitlines()
        module = _module_name(root, path)
        stack: list[tuple[ast.AST, str]] = [(tree, module)]
        while stack:
            parent, prefix = stack.pop(0)
            for node in ast.iter_child_nodes(parent):
                if isinstance(node, ast.ClassDef):
                    stack.append((node, f"{prefix}.{node.name}"))
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node, clean=True)
                    if not doc:
                        continue
                    content = _strip_docstring(lines, node)
                    if not content or len(content) > max_chars or content.count("\n") < 1:
                        continue
                    yield f"{prefix}.{node.name}", content, _first_sentence(doc)


def build(min_docs: int = 5000, limit: int | None = None) -> tuple[list[Function], list[Function]]:
    """Documents (deduplicated by content) and the functions usable as queries.

    A query is kept when its sentence has at least 4 words, names a unique function, and is unique itself.
    """
    seen: set[str] = set()
    docs: list[Function] = []
    for name, content, query in iter_functions():
        h = hashlib.md5(content.encode()).hexdigest()
        if h in seen:
            continue
        seen.add(h)
        docs.append(Function(len(docs) + 1, name, content, query))
        if limit and len(docs) >= limit:
            break
    counts: dict[str, int] = {}
    for d in docs:
        counts[d.query.lower()] = counts.get(d.query.lower(), 0) + 1
    queries = [
        d
        for d in docs
        if len(d.query.split()) >= 4 and counts[d.query.lower()] == 1 and not d.query.lower().startswith("see ")
    ]
    return docs, queries


def pick_queries(queries: list[Function], n: int) -> list[Function]:
    """A deterministic, evenly spread sample of ``n`` queries."""
    if len(queries) <= n:
        return queries
    step = len(queries) / n
    return [queries[int(i * step)] for i in range(n)]
