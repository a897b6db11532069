"""The package's import graph follows the data flow: no module imports one that imports it back,
directly or through others (imports inside functions count; `if TYPE_CHECKING:` ones do not)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "batchnlp"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path, modules: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    guarded = [node for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)]
    skipped = {id(n) for node in guarded for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("batchnlp"):
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("batchnlp")]
        for name in names:
            # `from batchnlp.engines import ray` imports the module batchnlp.engines.ray
            while name not in modules and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in modules:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: runtime_imports(path, set(paths)) - {name} for name, path in paths.items()}
    # A package's __init__ runs before its modules; the modules importing their own package are fine.
    return {name: {d for d in deps if not name.startswith(d + ".")} for name, deps in graph.items()}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    assert cycle(import_graph()) is None, " -> ".join(cycle(import_graph()))


def test_the_cycle_finder_finds_one():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_lower_layers_do_not_import_the_conductor():
    graph = import_graph()
    upper = {"batchnlp.runner", "batchnlp.cli", "batchnlp.bench", "batchnlp.engines.local", "batchnlp.engines.ray"}
    for name, deps in graph.items():
        if name.startswith(("batchnlp.read", "batchnlp.batch", "batchnlp.model", "batchnlp.tasks", "batchnlp.write",
                            "batchnlp.spec", "batchnlp.settings", "batchnlp.session", "batchnlp.annotator")):
            assert not deps & upper, (name, deps & upper)


def test_no_module_shadows_a_public_name():
    """`batchnlp.annotate` must be the function even after `import batchnlp.<module>` somewhere."""
    import pkgutil

    import batchnlp

    modules = {m.name for m in pkgutil.iter_modules(batchnlp.__path__)}
    assert not modules & set(batchnlp.__all__)
