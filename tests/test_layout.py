"""The package layout is the architecture: layers import only downward, no import cycle, modules stay small.

Every `from ... import` in `diffunlearn/` counts, at module level or inside a function (a lazy import is still a
dependency). The layers, lowest first, are the order below; a module may import from its own layer or lower ones.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "diffunlearn"
LAYERS = [
    {"errors", "version", "registry", "assets", "distributed", "config", "config_tree", "config_loading",
     "outputs", "run_folder", "disk_cache", "config_checks", "config_stop"},  # foundation
    {"data"},          # data sets, batches, generated-image cache
    {"models"},        # model families (one file each), loading
    {"training"},      # the trainer and the update rule
    {"methods"},       # unlearning methods (one file each) and their saliency masks
    {"ntk"},           # Fast-NTK (closed-form classifier unlearning)
    {"evaluation"},    # judges, targets, FID, the Evaluator, in-loop monitor, report, gallery
    {"recipes"},       # training the embedded base models (and RT)
    {"robustness"},    # attacks that try to bring a forgotten target back, and their suite
    {"runs"},          # one unlearning run and one evaluation, shared by the CLI, the API and the benchmarks
    {"benchmarks"},    # side-by-side tables
    {"commands", "api", "api_settings", "__init__", "__main__"},  # entry points
]
MAX_LINES = 300


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set:
    """Absolute names of the diffunlearn modules (or module.attribute) that `path` imports."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] == "diffunlearn":
                found.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "diffunlearn")
    return found


def _graph() -> dict:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for target in _imports(path):
            while target and target not in modules:  # module.attribute -> module
                target = target.rpartition(".")[0]
            if target and target != name:
                deps.add(target)
        graph[name] = deps
    return graph


def _layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index
    raise AssertionError(f"{module} is in no layer: add its top-level name to LAYERS in {__file__}")


def test_every_import_points_to_the_same_layer_or_below():
    upward = [f"{m} (layer {_layer(m)}) -> {d} (layer {_layer(d)})"
              for m, deps in sorted(_graph().items()) for d in sorted(deps)
              if d != "diffunlearn" and _layer(d) > _layer(m)]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_module_imports_the_package_root():
    offenders = [m for m, deps in _graph().items() if "diffunlearn" in deps and m != "diffunlearn.__main__"]
    assert not offenders, f"import from the package root (diffunlearn/__init__): {offenders}"


def test_there_is_no_import_cycle():
    graph = _graph()
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE.parent)} has {lines} lines (at most {MAX_LINES})"


def test_the_layer_test_catches_an_upward_import(tmp_path, monkeypatch):
    """The checks above can fail: an evaluation module importing the commands layer is reported."""
    fake = tmp_path / "diffunlearn"
    (fake / "evaluation").mkdir(parents=True)
    (fake / "commands").mkdir()
    (fake / "evaluation" / "x.py").write_text("from ..commands import y\n")
    (fake / "commands" / "y.py").write_text("from ..evaluation import x\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    graph = _graph()
    assert graph["diffunlearn.evaluation.x"] == {"diffunlearn.commands.y"}
    assert _layer("diffunlearn.commands.y") > _layer("diffunlearn.evaluation.x")
    with pytest.raises(AssertionError, match="import cycles"):
        test_there_is_no_import_cycle()
