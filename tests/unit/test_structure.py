"""The layout the README's architecture section promises: no import circles (type-only imports
included), ``models/`` free of I/O, modules of a readable size, no stub that exists only to
split a class across files."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("models", "stream", "scripts")
MAX_LINES = 320  # "~300": a module past this is split by what it holds


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts): p
            for pkg in PACKAGES for p in sorted((ROOT / pkg).glob("*.py"))}


def _imports(path: Path, known: set[str]) -> set[str]:
    """Project modules ``path`` imports anywhere (under TYPE_CHECKING and in functions too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in known:
                out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names
                       if f"{node.module}.{a.name}" in known)
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_circle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circles() -> None:
    modules = _modules()
    graph = {m: _imports(p, set(modules)) - {m} for m, p in modules.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_models_do_no_io() -> None:
    io = {"asyncio", "aiokafka", "redis", "faust", "socket", "requests", "urllib", "stream"}
    for name, path in _modules().items():
        if not name.startswith("models."):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) \
                    else [node.module or ""]
                assert not {n.split(".")[0] for n in names} & io, (name, names)


def test_modules_stay_readable() -> None:
    long = {n: len(p.read_text().splitlines()) for n, p in _modules().items()}
    assert {n: k for n, k in long.items() if k > MAX_LINES} == {}


def test_no_stub_that_only_splits_a_class() -> None:
    """A method whose body raises ``NotImplementedError`` belongs to a real base class: at
    least two subclasses implement it (otherwise it is a stub splitting one class in files)."""
    classes: dict[str, tuple[list[str], set[str], set[str]]] = {}  # bases, methods, stubs
    for path in _modules().values():
        for cls in ast.walk(ast.parse(path.read_text())):
            if isinstance(cls, ast.ClassDef):
                fns = [f for f in cls.body if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)]
                stubs = {f.name for f in fns if any(
                    isinstance(s, ast.Raise) and "NotImplementedError" in ast.unparse(s)
                    for s in f.body)}
                bases = [b.id for b in cls.bases if isinstance(b, ast.Name)]
                classes[cls.name] = (bases, {f.name for f in fns} - stubs, stubs)
    lonely = [f"{name}.{stub}" for name, (_, _, stubs) in classes.items() for stub in stubs
              if sum(name in bases and stub in methods
                     for bases, methods, _ in classes.values()) < 2]
    assert lonely == []
