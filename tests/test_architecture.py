"""The package's import graph: no circle, and every import points down the layers of docs/ARCHITECTURE.md."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "axolotl_domino"

# Bottom to top. A module may import only from layers below its own.
LAYERS = [
    {"errors"},
    {"hf"},
    {"args", "files", "cpu", "loss", "sandbox", "shards", "publish", "tracking", "static_decode", "score.embedder",
     "score.fidelity", "score.report"},
    {"layout", "embedded", "induce", "generate", "endpoint", "probe", "chat", "score.diversity", "score.memorization",
     "score.plots"},
    {"references", "write", "launch", "respond", "generate_vllm", "judge", "estimate", "score.scorecard"},
    {"trainer", "diagnostics", "filters", "score"},
    {"synthesize"},
    {"child"},
    {"pipeline"},
    {"cli", "plugin"},
    {""},  # the package itself
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every `axolotl_domino` module this file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "axolotl_domino":
            base = node.module.removeprefix("axolotl_domino").lstrip(".")
            for alias in node.names:  # `from axolotl_domino import child` imports the module `child`
                sub = f"{base}.{alias.name}".lstrip(".")
                found.add(sub if (PACKAGE / f"{sub.replace('.', '/')}.py").exists() else base)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("axolotl_domino").lstrip(".") for a in node.names if a.name.startswith("axolotl_domino")}
    return found


def _graph() -> dict[str, set[str]]:
    graph = {_module_name(path): _imports(path) for path in PACKAGE.rglob("*.py")}
    return {module: deps - {module} for module, deps in graph.items()}


def test_every_module_has_a_layer():
    layered = set().union(*LAYERS)
    assert set(_graph()) == layered, "add new modules to LAYERS here and to docs/ARCHITECTURE.md"


def test_no_import_circle():
    graphlib.TopologicalSorter(_graph()).prepare()  # raises CycleError naming the circle


def test_imports_only_point_down():
    layer = {module: i for i, modules in enumerate(LAYERS) for module in modules}
    upward = sorted(
        f"{module or 'axolotl_domino'} (layer {layer[module] + 1}) imports {dep} (layer {layer[dep] + 1})"
        for module, deps in _graph().items()
        for dep in deps
        if layer[dep] >= layer[module]
    )
    assert not upward, "\n".join(upward)
