"""The package's modules import each other without a cycle, counting imports inside functions too
(an import moved into a function to dodge a cycle is still a cycle)."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "elbo_lib"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str, modules: set[str]) -> str | None:
    """The innermost package module that ``name`` refers to (a module, or its package)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _packages_run_first(target: str, importer: str, modules: set[str]) -> set[str]:
    """Importing ``elbo_lib.a.b.c`` runs ``elbo_lib/a/__init__`` and ``elbo_lib/a/b/__init__`` first, unless the
    importer is inside that package (its ``__init__`` is already running); the root package is left out."""
    parts = target.split(".")
    out = set()
    for k in range(2, len(parts)):
        pkg = ".".join(parts[:k])
        if pkg in modules and not (importer == pkg or importer.startswith(pkg + ".")):
            out.add(pkg)
    return out


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("elbo_lib")]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    root = ".".join(base + ([node.module] if node.module else []))
                elif node.module and node.module.startswith("elbo_lib"):
                    root = node.module
                else:
                    continue
                targets = [f"{root}.{a.name}" if f"{root}.{a.name}" in modules else root for a in node.names]
            for t in targets:
                r = _resolve(t, modules)
                if r and r != mod:
                    graph[mod].add(r)
                    graph[mod].update(_packages_run_first(r, mod, modules))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycle_inside_elbo_lib():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_sees_cycles_and_function_level_imports():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    graph = import_graph()
    assert "elbo_lib.aligner" in graph["elbo_lib.ablations"]  # relative 'from .aligner import ...'
    assert "elbo_lib.evaluation.runner" in graph["elbo_lib.cli"]
    assert "elbo_lib.evaluation" in graph["elbo_lib.cli"]  # the package's __init__ runs first
