"""Layers point down and no files import each other: the package's imports, read from the source (ast),
every import counted (also those inside functions).

    errors, files  <-  spec  <-  model (and the package's public API)  <-  data  <-  engine
                   <-  analysis, bench, bench_data  <-  cli, __main__
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "twogpu_alexnet"
LAYERS = {  # module (or package) -> layer; a module may import its own layer and those below it
    "errors": 0, "files": 0, "spec": 1, "": 2, "model": 2, "data": 3, "engine": 4,
    "analysis": 5, "bench": 5, "bench_data": 5, "cli": 6, "__main__": 6,
}


def modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module of the package at ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``from . import x``: the module x, else the package)."""
    mods = modules(root)
    graph = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in mods:  # a name inside a module -> the module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    found.add(target)
        graph[name] = found
    return graph


def layer(name: str) -> int:
    parts = name.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else ""]


def upward(graph: dict[str, set[str]]) -> list[str]:
    return [f"{a} imports {b}" for a, targets in sorted(graph.items()) for b in sorted(targets)
            if layer(b) > layer(a)]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    assert [name for name in modules(PACKAGE) if name.split(".")[1:2] and name.split(".")[1] not in LAYERS] == []


def test_no_module_imports_a_higher_layer():
    graph = imports(PACKAGE)
    assert "twogpu_alexnet.model" in graph["twogpu_alexnet.engine.train"]  # the walk sees the imports
    assert upward(graph) == []


def test_no_import_cycle():
    assert cycles(imports(PACKAGE)) == []


def test_the_walk_finds_an_upward_import_and_a_cycle(tmp_path):
    """The checks themselves, on a small package written here: engine -> analysis (up), a <-> b inside data,
    one of them inside a function and through ``from . import``."""
    root = tmp_path / "twogpu_alexnet"
    for folder in ("engine", "analysis", "data"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "engine" / "train.py").write_text("from ..analysis.kernels import grid\n")
    (root / "analysis" / "kernels.py").write_text("from ..engine import train\ngrid = 1\n")
    (root / "data" / "a.py").write_text("from .b import x\n")
    (root / "data" / "b.py").write_text("x = 1\n\ndef f():\n    from . import a\n")
    graph = imports(root)
    assert upward(graph) == ["twogpu_alexnet.engine.train imports twogpu_alexnet.analysis.kernels"]
    assert sorted(cycles(graph)) == [["twogpu_alexnet.analysis.kernels", "twogpu_alexnet.engine.train"],
                                     ["twogpu_alexnet.data.a", "twogpu_alexnet.data.b"]]
