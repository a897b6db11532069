"""The package's import graph follows the data flow: no module imports one that imports it back,
directly or through others. Every import counts: at the top, inside functions (deferred), under
`if TYPE_CHECKING:` (type-only), and a name taken from the package root (`from batchnlp import
__version__` runs the root's imports)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "batchnlp"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("batchnlp"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                # `from batchnlp.engines import ray` imports the module batchnlp.engines.ray; `from
                # batchnlp import __version__` takes a name from the package root itself
                names.append(submodule if submodule in modules else node.module)
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("batchnlp")]
        for name in names:
            while name not in modules and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in modules:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: imports(path, set(paths)) - {name} for name, path in paths.items()}
    # A package's __init__ runs before its modules: a submodule's own packages are its parents,
    # not imports; a name taken from one (`from batchnlp import __version__`) is kept above.
    return graph


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
    upper = {"batchnlp.runner", "batchnlp.cli", "batchnlp.bench", "batchnlp.engines.local", "batchnlp.engines.ray",
             "batchnlp.preview", "batchnlp.api"}
    for name, deps in graph.items():
        if name.startswith(("batchnlp.read", "batchnlp.batch", "batchnlp.model", "batchnlp.tasks", "batchnlp.write",
                            "batchnlp.spec", "batchnlp.settings", "batchnlp.session", "batchnlp.stages",
                            "batchnlp.decide", "batchnlp.work", "batchnlp.job", "batchnlp.probe")):
            assert not deps & upper, (name, deps & upper)


def test_the_model_layer_does_not_import_the_output_writer():
    """Loading a model and writing the output are separate rooms: the model cache's durable files
    go through `batchnlp.durable`, not the output's `Folder`."""
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("batchnlp.model"):
            assert not {d for d in deps if d.startswith("batchnlp.write")}, (name, deps)


def test_the_finder_counts_type_only_deferred_and_root_imports(tmp_path):
    """Each kind of import the graph must see, found in a module written here."""
    module = tmp_path / "m.py"
    module.write_text("from typing import TYPE_CHECKING\nfrom batchnlp import __version__\n"
                      "if TYPE_CHECKING:\n    from batchnlp.spec import JobSpec\n"
                      "def f():\n    from batchnlp.engines import ray\n")
    found = imports(module, {"batchnlp", "batchnlp.spec", "batchnlp.engines", "batchnlp.engines.ray"})
    assert found == {"batchnlp", "batchnlp.spec", "batchnlp.engines.ray"}


def test_no_module_shadows_a_public_name():
    """`batchnlp.annotate` must be the function even after `import batchnlp.<module>` somewhere."""
    import pkgutil

    import batchnlp

    modules = {m.name for m in pkgutil.iter_modules(batchnlp.__path__)}
    assert not modules & set(batchnlp.__all__)
