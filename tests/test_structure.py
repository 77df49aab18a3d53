"""The house rules of the package, checked on its source: rooms in a declared order (a module imports only from its
own room or rooms below it), no import cycle (imports inside functions counted), old top-level paths only as thin
shims, one command-line room, one place that imports llama_cpp, one module that renames files into place."""

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cerebellum_ray"
# The data flow, bottom to top: a room may import from itself and from rooms before it, never after.
ROOMS = ("core", "native", "formats", "quant", "evaluate", "predict", "study", "results", "cli")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def _modules() -> dict[str, tuple[Path, ast.Module]]:
    """Every module of the package by dotted name (rooms recursively, shims and __init__ files included)."""
    return {_module_name(p): (p, ast.parse(p.read_text(), str(p))) for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, path: Path, node: ast.ImportFrom, known: set[str]) -> list[str]:
    """The modules of the package an import statement uses (relative imports resolved against `module`): the
    submodules it names, and the module it imports from when it takes other names than submodules from it."""
    if node.level == 0:
        base = node.module or ""
    else:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
    takes_names = len(submodules) < len(node.names)
    return ([base] if takes_names and base in known else []) + submodules


def _package_imports(module: str, path: Path, tree: ast.Module, known: set[str]) -> set[str]:
    """Modules of this package that `module` imports anywhere (top level or inside functions)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            out.update(_resolve(module, path, node, known))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
    return {m for m in out if m != module and m != "cerebellum_ray"}


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _package_imports(name, path, tree, known) for name, (path, tree) in mods.items()}


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else None


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


def _shims() -> set[str]:
    return {name for name in _modules() if name.count(".") == 1 and _room(name) is None
            and name != "cerebellum_ray.__main__"}


def test_no_import_cycles():
    graph = {name: deps for name, deps in _graph().items() if name not in _shims()}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, deps in sorted(graph.items()):
        room = _room(module)
        if room is None:
            continue
        for dep in sorted(deps):
            dep_room = _room(dep)
            if dep_room is None:
                bad.append(f"{module} imports {dep}, which is outside the rooms (an old path: import the room)")
            elif ROOMS.index(dep_room) > ROOMS.index(room):
                bad.append(f"{module} ({room}) imports {dep} ({dep_room}), a room above it")
    return bad


def test_rooms_import_only_themselves_and_rooms_below():
    assert _violations(_graph()) == []


def test_the_room_rule_finds_an_upward_import():
    graph = {"cerebellum_ray.core.store": {"cerebellum_ray.study.run"}, "cerebellum_ray.study.run": set(),
             "cerebellum_ray.results.x": {"cerebellum_ray.store"}}
    assert len(_violations(graph)) == 2


def test_relative_imports_are_resolved():
    path = PACKAGE / "study" / "run.py"
    known = set(_modules())
    node = ast.parse("from ..core import store").body[0]
    assert _resolve("cerebellum_ray.study.run", path, node, known) == ["cerebellum_ray.core.store"]
    node = ast.parse("from ..core.store import rows").body[0]
    assert _resolve("cerebellum_ray.study.run", path, node, known) == ["cerebellum_ray.core.store"]


@pytest.mark.parametrize("room", ROOMS)
def test_room_init_imports_nothing_eagerly(room):
    tree = ast.parse((PACKAGE / room / "__init__.py").read_text())
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)) and not (
        isinstance(n, ast.ImportFrom) and n.module == "__future__")]
    assert top_level == [], f"{room}/__init__.py imports at its top level"


def test_old_paths_are_thin_shims():
    for name in _shims():
        path, tree = _modules()[name]
        assert len(path.read_text().splitlines()) <= 8, f"{path} is more than a shim"


def _imports_of(tree: ast.Module, module: str) -> bool:
    return any(isinstance(n, ast.Import) and any(a.name == module for a in n.names) for n in ast.walk(tree)) or any(
        isinstance(n, ast.ImportFrom) and n.level == 0 and n.module == module for n in ast.walk(tree))


def test_one_module_imports_llama_cpp():
    assert [name for name, (_, tree) in _modules().items() if _imports_of(tree, "llama_cpp")] == [
        "cerebellum_ray.native.llama"]


def test_only_the_cli_room_uses_argparse():
    users = [name for name, (_, tree) in _modules().items() if _imports_of(tree, "argparse")]
    assert users and all(_room(name) == "cli" for name in users)


def _calls(tree: ast.Module, attr: str) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == attr
               for n in ast.walk(tree))


def test_one_module_renames_files_into_place():
    mods = _modules()
    writers = {name for name, (_, tree) in mods.items()
               if _calls(tree, "replace") and _imports_of(tree, "os") and _calls(tree, "mkstemp")}
    assert writers <= {"cerebellum_ray.core.atomic"}
    assert [name for name, (_, tree) in mods.items() if _calls(tree, "mkstemp")] == ["cerebellum_ray.core.atomic"]
