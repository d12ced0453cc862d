#!/usr/bin/env python
"""The import graph of the library, checked against its layers and drawn into ARCHITECTURE.md.

    python scripts/import_graph.py            # print violations (upward imports, cycles); exit 1 if any
    python scripts/import_graph.py --write    # also redraw the diagram in ARCHITECTURE.md

Every ``import`` of ``ghfeat_hf`` modules counts, at module level or inside a function (a lazy import is still a
dependency). A module may import modules of its own layer or of lower layers; an import cycle between modules is a
violation at any layer. ``tests/test_architecture.py`` runs the check and compares the diagram with the file.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "ghfeat_hf"
DOCUMENT = ROOT / "ARCHITECTURE.md"
SCRIPT_FOLDERS = ("training", "conversion", "benchmarks", "scripts")
DIAGRAM = re.compile(r"(<!-- import-graph -->\n)(.*?)(<!-- /import-graph -->)", re.DOTALL)

# Lowest first. A module belongs to the first layer with a pattern that is its name or a package above it.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("floor", ("version", "errors", "files", "embedded", "arguments", "error_reporting", "image_io", "image_metrics",
               "model_names", "evaluation_report", "visualization")),
    ("models", ("configuration_stylegan", "configuration_ghfeat", "layers", "modeling_stylegan", "modeling_ghfeat",
                "image_processing_ghfeat", "strict_loading", "timm_models")),
    ("runtime", ("runtime", "encoding", "perceptual", "data", "model_card", "hub", "reconstruction")),
    ("applications", ("extraction", "editing", "restoration", "segmentation", "evaluation", "conversion", "demo")),
    ("commands", ("cli", "editing.cli", "evaluation.cli", "restoration.cli", "segmentation.cli",
                  "conversion.command")),
    ("package", ("__init__",)),
)


def module_name(path: Path) -> str:
    """``ghfeat_hf/editing/cli.py`` -> ``editing.cli``; a package's ``__init__.py`` is the package itself (the top
    package's is ``__init__``)."""
    parts = list(path.relative_to(ROOT / PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _resolve(node: ast.ImportFrom | ast.Import, module: str, is_package: bool) -> Iterable[str]:
    """The library modules an import statement of ``module`` refers to (names imported from a package that are
    its submodules count as those submodules)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                yield alias.name[len(PACKAGE) + 1:] or "__init__"
        return
    if node.level:
        base = [] if module == "__init__" else module.split(".")
        base = base if is_package else base[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    elif node.module and (node.module == PACKAGE or node.module.startswith(PACKAGE + ".")):
        target = node.module[len(PACKAGE) + 1:]
    else:
        return
    for alias in node.names:
        candidate = f"{target}.{alias.name}" if target else alias.name
        yield candidate if _exists(candidate) else (target or "__init__")


def _exists(module: str) -> bool:
    path = ROOT / PACKAGE / Path(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def script_imports() -> list[str]:
    """``"module imports name"`` for every absolute import in the library of a script folder or one of its modules
    (the library must work without the scripts)."""
    names = set(SCRIPT_FOLDERS) | {path.stem for folder in SCRIPT_FOLDERS for path in (ROOT / folder).glob("*.py")}
    found = []
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            modules = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                       [node.module] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{module_name(path)} imports {module}" for module in modules
                      if module and module.split(".")[0] in names]
    return found


def import_graph() -> dict[str, set[str]]:
    """``{module: {imported library modules}}`` for every module of the package (self-imports dropped)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        module = module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        imports = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                imports.update(_resolve(node, module, path.name == "__init__.py"))
        graph[module] = {target for target in imports if target != module}
    return graph


def layer_of(module: str) -> int:
    for index, (_, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            if module == pattern or module.startswith(pattern + "."):
                best = index
                break
        else:
            continue
        # a more specific pattern of a higher layer (``editing.cli`` above ``editing``) wins
        for higher, (_, patterns) in enumerate(LAYERS[index + 1:], start=index + 1):
            if any(module == pattern or module.startswith(pattern + ".") for pattern in patterns):
                best = higher
        return best
    raise KeyError(f"{PACKAGE}.{module} is in no layer of scripts/import_graph.py: add it to LAYERS")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Human-readable list of upward imports and import cycles (empty when the layering holds)."""
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer_of(target) > layer_of(module):
                found.append(f"upward import: {module} ({LAYERS[layer_of(module)][0]}) imports {target} "
                             f"({LAYERS[layer_of(target)][0]})")
    found += [f"import cycle: {' <-> '.join(component)}" for component in _cycles(graph)]
    return found + [f"script import: {line}" for line in script_imports()]


def mermaid(graph: dict[str, set[str]]) -> str:
    """A Mermaid flowchart: one box per layer (top: commands), packages collapsed to one node, arrows = imports."""
    def node(module: str) -> str:
        parts = module.split(".")
        return parts[0] if len(parts) > 1 and layer_of(module) == layer_of(parts[0]) else module

    edges = sorted({(node(module), node(target)) for module, targets in graph.items() for target in targets
                    if node(module) != node(target)})
    nodes = sorted({node(module) for module in graph})
    lines = ["```mermaid", "flowchart TB"]
    for layer in reversed(range(len(LAYERS))):
        members = [name for name in nodes if layer_of(name) == layer and name != "__init__"]
        if not members:
            continue
        lines.append(f"  subgraph layer_{LAYERS[layer][0]} [{LAYERS[layer][0]}]")
        lines += [f"    {name.replace('.', '_')}[\"{name}\"]" for name in members]
        lines.append("  end")
    lines += [f"  {source.replace('.', '_')} --> {target.replace('.', '_')}" for source, target in edges
              if "__init__" not in (source, target)]
    lines.append("```")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="redraw the diagram in ARCHITECTURE.md")
    args = parser.parse_args(argv)
    graph = import_graph()
    found = violations(graph)
    print("\n".join(found) or f"{len(graph)} modules, no upward import, no cycle")
    if args.write:
        text = DOCUMENT.read_text()
        DOCUMENT.write_text(DIAGRAM.sub(lambda match: match[1] + mermaid(graph) + match[3], text))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
