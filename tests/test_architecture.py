"""The library's layering (ARCHITECTURE.md): no upward import, no cycle, no script import, the diagram current."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_library_keeps_its_layers(import_graph):
    graph = import_graph.import_graph()
    assert {"runtime", "cli", "editing.cli", "extraction.extract", "modeling_ghfeat"} <= set(graph)
    assert "modeling_ghfeat" in graph["runtime"] and "runtime" in graph["evaluation.cli"]
    assert import_graph.violations(graph) == []


def test_the_check_finds_upward_imports_and_cycles(import_graph):
    graph = {"errors": {"runtime"}, "runtime": {"modeling_ghfeat"}, "modeling_ghfeat": set(),
             "extraction.extract": {"editing.codes"}, "editing.codes": {"extraction.extract"}}
    found = import_graph.violations(graph)
    assert "upward import: errors (floor) imports runtime (runtime)" in found
    assert "import cycle: editing.codes <-> extraction.extract" in found
    assert not any("modeling_ghfeat imports" in line for line in found)


def test_every_module_has_a_layer(import_graph):
    layers = {module: import_graph.layer_of(module) for module in import_graph.import_graph()}
    names = [name for name, _ in import_graph.LAYERS]
    assert names[layers["errors"]] == "floor" and names[layers["editing.cli"]] == "commands"
    assert names[layers["editing.codes"]] == "applications" and names[layers["__init__"]] == "package"
    with pytest.raises(KeyError, match="no layer"):
        import_graph.layer_of("unplaced_module")


def test_the_diagram_in_architecture_md_is_current(import_graph):
    text = (ROOT / "ARCHITECTURE.md").read_text()
    match = import_graph.DIAGRAM.search(text)
    assert match, "ARCHITECTURE.md lost its <!-- import-graph --> markers"
    assert match[2] == import_graph.mermaid(import_graph.import_graph()), (
        "the import graph changed: run `python scripts/import_graph.py --write`")
