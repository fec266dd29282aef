"""The library's layering: what each layer may import, no import cycle, and what
``import pyro_grad`` loads.

Layers, lowest first: the ``engine``'s tracing primitives (particles, provenance,
jumps, runs; with ``errors`` and ``distributions``), the estimators
(``gradient_estimators``, with ``baselines`` and ``pyro_infer``), the engine's
``surrogate`` (which assembles the estimators' terms) and ``importance`` (which
scores a guide and its model as the estimators ask), the ``handler``, the
``objectives``; ``diagnostics`` above them; ``tuning`` above diagnostics; the
``harness`` (comparisons, reports, benchmark programs) above the core; the ``cli`` on
top. The graph is read from the source (every ``import``, function-local ones too, so
that no cycle hides behind one).
"""

import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "pyro_grad"
MODELS = pathlib.Path(__file__).resolve().parents[1] / "models"

#: Layer of each top-level part of the package; a module may import its own layer and lower.
LAYERS = {
    "errors": 0, "distributions": 0, "one_hot": 0, "engine": 0, "baselines": 1, "pyro_infer": 1, "gradient_estimators": 1,
    "engine.surrogate": 2, "engine.importance": 2, "engine.recording": 2, "handler": 2, "objectives": 3, "diagnostics": 4, "tuning": 5, "harness": 6, "cli": 7,
    "__init__": 7,
}


def module_files() -> dict:
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(("pyro_grad",) + tuple(p for p in parts if p != "__init__"))
        files[name] = path
    for path in MODELS.glob("*.py"):
        stem = path.stem
        files["pyro_grad.harness.models" + ("" if stem == "__init__" else f".{stem}")] = path
    return files


def imports_of(path: pathlib.Path, name: str, known: set) -> set:
    """The pyro_grad modules ``path`` imports (``from pyro_grad.x import y`` counts
    ``pyro_grad.x.y`` when that is a module, else ``pyro_grad.x``)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def import_graph() -> dict:
    files = module_files()
    return {name: imports_of(path, name, set(files)) for name, path in files.items()}


def layer(module: str) -> int:
    parts = module.split(".")[1:] or ["__init__"]
    return LAYERS.get(".".join(parts[:2]), LAYERS[parts[0]])


def test_every_module_imports_only_its_own_layer_and_below():
    graph = import_graph()
    upward = sorted(f"{m} imports {t}" for m, targets in graph.items() for t in targets
                    if layer(t) > layer(m) and not t == "pyro_grad")
    assert upward == []


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    # Package __init__ modules re-export their children: an edge child -> package is a
    # cycle only through the package's own imports, which the children never need.
    state, cycles = {}, []

    def visit(node, path):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target] if target in path else [node, target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_import_pyro_grad_loads_neither_the_harness_nor_its_libraries():
    code = (
        "import sys; import pyro_grad; "
        "print(','.join(m for m in sorted(sys.modules) if m.split('.')[0] in "
        "('pandas', 'sqlite3', 'cloudpickle', 'sklearn', 'mlxtend', 'jinja2', 'arviz', 'matplotlib', 'scipy') "
        "or m.startswith(('pyro_grad.harness', 'pyro_grad.tuning', 'pyro_grad.diagnostics', 'pyro_grad.cli'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


@pytest.mark.parametrize("name, module", [("diagnose", "pyro_grad.diagnostics"), ("Retuned", "pyro_grad.tuning.retuned"),
                                          ("compare", "pyro_grad.harness.comparison")])
def test_the_lazy_names_load_their_module_on_first_use(name, module):
    code = f"import sys, pyro_grad; assert {module!r} not in sys.modules; pyro_grad.{name}; print({module!r} in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


def test_an_unknown_name_is_an_attribute_error():
    import pyro_grad

    with pytest.raises(AttributeError, match="has no attribute 'nonesuch'"):
        pyro_grad.nonesuch  # noqa: B018
