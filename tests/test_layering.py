"""Imports go one way, and no module imports itself back through others (lazy imports included).

Every ``import``/``from ... import`` of ``pspnet`` anywhere in a module (top level or inside a
function) is an edge. The layers, bottom to top:

    errors, cpu, files, labels, distributed, version  ->  models, data  ->  metrics, plots, config  ->  export
    ->  inference  ->  training, hub  ->  api  ->  bench, demo, info, serve  ->  cli

``models`` uses only the foundation and ``torch``; ``data`` never sees models; ``hub`` uses models.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "pspnet"

# what each part of the package may import from pspnet (besides itself)
FOUNDATION = {"pspnet.errors", "pspnet.capability", "pspnet.cpu", "pspnet.files", "pspnet.labels",
              "pspnet.distributed", "pspnet.version"}
ALLOWED: dict[str, set[str]] = {
    "pspnet.errors": set(),
    "pspnet.capability": {"pspnet.files", "pspnet.errors", "pspnet.version"},  # its cache file, its error
    "pspnet.cpu": {"pspnet.files", "pspnet.capability"},  # the bf16 probe's cache file; what runs here
    "pspnet.files": {"pspnet.errors"},  # UnsafePathError for paths outside their folder
    "pspnet.version": set(),
    "pspnet.labels": set(),
    "pspnet.distributed": {"pspnet.errors"},
    "pspnet.models": FOUNDATION - {"pspnet.cpu", "pspnet.capability"},
    "pspnet.data": FOUNDATION - {"pspnet.cpu", "pspnet.capability"},
    "pspnet.metrics": FOUNDATION,
    "pspnet.plots": FOUNDATION | {"pspnet.data"},
    "pspnet.config": FOUNDATION | {"pspnet.models", "pspnet.data"},
    "pspnet.export": FOUNDATION | {"pspnet.models", "pspnet.data"},
    "pspnet.inference": FOUNDATION | {"pspnet.models", "pspnet.data", "pspnet.metrics", "pspnet.plots",
                                      "pspnet.config", "pspnet.export"},
    "pspnet.training": FOUNDATION | {"pspnet.models", "pspnet.data", "pspnet.metrics", "pspnet.plots",
                                     "pspnet.config", "pspnet.export", "pspnet.inference"},
    "pspnet.hub": FOUNDATION | {"pspnet.models"},
    # the Python API (pspnet.load): inference's loading, settings and per-image step, hub's catalogue names
    "pspnet.api": FOUNDATION | {"pspnet.models", "pspnet.data", "pspnet.metrics", "pspnet.plots", "pspnet.config",
                                "pspnet.export", "pspnet.inference", "pspnet.hub"},
}
APPS = {"pspnet.bench", "pspnet.demo", "pspnet.info", "pspnet.serve"}  # may use everything but the CLI
TOP = {"pspnet.cli"}  # the package: a module per command, common.py, options.py (the checked option types)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, name: str | None = None) -> set[str]:
    """Every pspnet module ``path`` (module ``name``) imports, top level or inside functions, resolved
    to absolute names (``from . import x`` -> ``pkg.x``)."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "pspnet"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "pspnet":
                continue
            submodules = {f"{mod}.{a.name}" for a in node.names if _is_module(f"{mod}.{a.name}")}
            found |= submodules  # "from .. import cpu" imports pspnet.cpu, not the package's __init__
            if len(submodules) < len(node.names):
                found.add(mod)
    return found


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def all_modules() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def part_of(module: str) -> str:
    """The layer key of a module: ``pspnet.models.resnet`` -> ``pspnet.models``."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for mod, deps in graph.items():
        me = part_of(mod)
        if mod == "pspnet":  # the package's own __init__: the model builders, the version and (lazily) the API
            allowed = {"pspnet.models", "pspnet.version", "pspnet.api"}
        elif me in TOP:
            continue
        elif me in APPS:
            allowed = set(ALLOWED) | APPS
        elif me in ALLOWED:
            allowed = ALLOWED[me]
        else:
            problems.append(f"{mod}: not assigned to a layer in tests/test_layering.py")
            continue
        for dep in deps:
            target = part_of(dep)
            if target == me:
                continue
            if target == "pspnet" or target not in allowed:
                problems.append(f"{mod} imports {dep}")
    return sorted(problems)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), module by module."""
    known = set(graph)

    def resolve(dep: str) -> str | None:  # "pspnet.models" -> the package's __init__ module
        return dep if dep in known else None

    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in filter(None, map(resolve, graph[v])):
            if w == v:
                continue
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_layering_violations():
    assert layering_violations(all_modules()) == []


def test_no_import_cycles():
    assert cycles(all_modules()) == []


@pytest.mark.parametrize("graph, words", [
    ({"pspnet.models.weights": {"pspnet.data.palettes"}, "pspnet.data.palettes": set()}, "imports pspnet.data"),
    ({"pspnet.inference.fast": {"pspnet.training.trainer"}, "pspnet.training.trainer": set()},
     "imports pspnet.training"),
    ({"pspnet.data.io": {"pspnet.cli"}, "pspnet.cli": set()}, "imports pspnet.cli"),
    ({"pspnet.bench.training": {"pspnet.cli.common"}, "pspnet.cli.common": set()}, "imports pspnet.cli.common"),
])
def test_checker_catches_a_violation(graph, words):
    assert any(words in p for p in layering_violations(graph))


def test_checker_catches_a_cycle_through_lazy_imports(tmp_path):
    graph = {"pspnet.inference.fast": {"pspnet.cpu"}, "pspnet.cpu": {"pspnet.inference.testtime"},
             "pspnet.inference.testtime": {"pspnet.inference.fast"}}
    assert cycles(graph) == [["pspnet.cpu", "pspnet.inference.fast", "pspnet.inference.testtime"]]
    lazy = tmp_path / "m.py"
    lazy.write_text("def f():\n    from .other import g\n    import pspnet.cli\n")
    assert {"pspnet.cli", "pspnet.inference.other"} <= imports_of(lazy, "pspnet.inference.m")


def test_importing_pspnet_changes_no_global_state():
    """``import pspnet`` and its packages leave the environment, PIL's limit and OpenCV's threads alone."""
    import subprocess
    import sys
    code = (
        "import os, PIL.Image, cv2\n"
        "env, limit, threads = dict(os.environ), PIL.Image.MAX_IMAGE_PIXELS, cv2.getNumThreads()\n"
        "import pspnet, pspnet.data, pspnet.data.io, pspnet.data.transforms, pspnet.data.datasets, pspnet.models, "
        "pspnet.inference.testtime, pspnet.training.trainer, pspnet.cli\n"
        "assert dict(os.environ) == env, set(os.environ.items()) ^ set(env.items())\n"
        "assert PIL.Image.MAX_IMAGE_PIXELS == limit, PIL.Image.MAX_IMAGE_PIXELS\n"
        "assert cv2.getNumThreads() == threads, cv2.getNumThreads()\n"
        "print('unchanged')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "PYTHONPATH": str(SRC)})
    assert out.returncode == 0 and "unchanged" in out.stdout, out.stderr
