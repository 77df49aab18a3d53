"""The house rules of the package, checked on its source: no import cycle (imports inside functions counted), one
command-line module, one place that imports llama_cpp, one module that renames files into place."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cerebellum_ray"


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.glob("*.py"))}


def _package_imports(name: str, tree: ast.Module) -> set[str]:
    """Modules of this package that `name` imports anywhere (top level or inside functions)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                out.add(node.module.split(".")[0])
            elif node.level == 1:
                out.update(a.name for a in node.names)
            elif node.module and node.module.startswith("cerebellum_ray."):
                out.add(node.module.split(".")[1])
            elif node.module == "cerebellum_ray":
                out.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("cerebellum_ray."))
    mods = {p.stem for p in PACKAGE.glob("*.py")}
    return {m for m in out if m in mods and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    graph = {name: _package_imports(name, tree) for name, tree in _modules().items()}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _imports_of(tree: ast.Module, module: str) -> bool:
    return any(isinstance(n, ast.Import) and any(a.name == module for a in n.names) for n in ast.walk(tree)) or any(
        isinstance(n, ast.ImportFrom) and n.level == 0 and n.module == module for n in ast.walk(tree))


def test_one_module_imports_llama_cpp():
    assert [name for name, tree in _modules().items() if _imports_of(tree, "llama_cpp")] == ["_llama"]


def test_one_command_line_module():
    assert [name for name, tree in _modules().items() if _imports_of(tree, "argparse")] == ["cli"]


def _calls(tree: ast.Module, attr: str) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == attr
               for n in ast.walk(tree))


def test_one_module_renames_files_into_place():
    writers = {name for name, tree in _modules().items()
               if _calls(tree, "replace") and _imports_of(tree, "os") and _calls(tree, "mkstemp")}
    assert writers <= {"atomic"}
    assert [name for name, tree in _modules().items() if _calls(tree, "mkstemp")] == ["atomic"]
