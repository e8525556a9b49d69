"""The package's layers: the numeric analysis (``flatfl.analysis``) is the ground floor.

It must import nothing of the trainer side (checkpoints, run directories, CLI, errors), no
source file may import a top-level ``analysis`` (it is installed only as ``flatfl.analysis``), and
the trainer and the parallel client runner must not import each other.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    p for d in ("flatfl", "analysis", "tests", "examples", "bench", "checkpoints") for p in (ROOT / d).rglob("*.py")
]


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
    return out


def test_no_source_imports_a_top_level_analysis_module():
    bad = [
        f"{p.relative_to(ROOT)}: {m}"
        for p in SOURCES
        for m in _imports(p)
        if m == "analysis" or m.startswith("analysis.")
    ]
    assert not bad, bad


def test_analysis_imports_nothing_of_the_trainer_side():
    # a fresh interpreter outside the repository, so only the installed package is found
    code = (
        "import importlib, json, pkgutil, sys\n"
        "import flatfl.analysis as a\n"
        "for m in pkgutil.iter_modules(a.__path__):\n"
        "    importlib.import_module('flatfl.analysis.' + m.name)\n"
        "print(json.dumps(sorted(k for k in sys.modules if k.startswith('flatfl'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True)
    mods = json.loads(out.stdout)
    assert "flatfl.analysis.operators" in mods and "flatfl.analysis.surfaces" in mods
    foreign = [m for m in mods if m != "flatfl" and not m.startswith("flatfl.analysis")]
    assert not foreign, f"flatfl.analysis pulled in {foreign}"
    ok = subprocess.run([sys.executable, "-c", "import analysis"], capture_output=True, cwd="/")
    assert ok.returncode != 0, "a top-level `analysis` module is installed"


def test_trainer_and_parallel_do_not_import_each_other():
    trainer, parallel = _imports(ROOT / "flatfl/trainer.py"), _imports(ROOT / "flatfl/parallel.py")
    assert not ("flatfl.parallel" in trainer and "flatfl.trainer" in parallel)


# flatfl modules whose import pulls in an optional or heavy plotting dependency: the only flatfl modules
# flatfl.runs may import inside a function (plotly: interactive figures; matplotlib: static figures)
LAZY_FLATFL = {
    "flatfl.analysis.interactive": "plotly",
    "flatfl.analysis.report_figures": "plotly",
    "flatfl.analysis.matching_figures": "plotly",
    "flatfl.analysis.plots": "matplotlib",
    "flatfl.analysis.interop": "curvlinops",
    "flatfl.tracking": "tensorboardX",
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _runs_imports() -> tuple[dict[str, set[str]], list[str]]:
    """flatfl.runs' import graph (module-level and function-local imports alike, ``from X import name`` counted
    as an import of X.name when that is a module) and the function-local imports of flatfl modules."""
    files = {_module_name(p): p for p in (ROOT / "flatfl" / "runs").rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    local: list[str] = []

    def visit(mod: str, node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                if isinstance(child, ast.Import):
                    names = [a.name for a in child.names]
                else:
                    base = child.module or ""
                    if child.level:  # relative: resolved against the package
                        pkg = mod.split(".")[: -child.level] if not files[mod].name == "__init__.py" else mod.split(".")
                        base = ".".join([*pkg, *([base] if base else [])])
                    names = [base] + [f"{base}.{a.name}" for a in child.names]
                for n in names:
                    if n in files and n != mod:
                        graph[mod].add(n)
                flatfl = [n for n in names[:1] if n == "flatfl" or n.startswith("flatfl.")]
                if in_function and flatfl and not any(n in LAZY_FLATFL for n in names):
                    local.append(f"{files[mod].relative_to(ROOT)}:{child.lineno}: {names[0]}")
            visit(mod, child, inner)

    for mod, path in files.items():
        visit(mod, ast.parse(path.read_text(), str(path)), False)
    return graph, local


def test_runs_has_no_import_circle():
    graph, _ = _runs_imports()
    assert "flatfl.runs.landscape" in graph and graph["flatfl.runs.report"], "the graph was not read"
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def dfs(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n) :] + [n]
            if n not in state and (cycle := dfs(n)) is not None:
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = dfs(m)
            assert cycle is None, "import circle in flatfl.runs: " + " -> ".join(cycle)


def test_runs_imports_flatfl_modules_at_module_level():
    _, local = _runs_imports()
    assert not local, f"function-local imports of flatfl modules (allowed only for {sorted(LAZY_FLATFL)}): {local}"


def test_settings_and_sources_are_at_the_bottom_of_runs():
    graph, _ = _runs_imports()
    assert graph["flatfl.runs.settings"] == set()
    assert graph["flatfl.runs.sources"] == set()
    assert graph["flatfl.runs.run"] <= {"flatfl.runs.sources"}


def test_runs_names_its_settings_types():
    # no ``settings: Any`` where a settings type is meant
    bad = [
        f"{p.relative_to(ROOT)}:{n.lineno}"
        for p in (ROOT / "flatfl" / "runs").rglob("*.py")
        for n in ast.walk(ast.parse(p.read_text()))
        if isinstance(n, ast.arg) and n.arg in ("settings", "ls") and isinstance(n.annotation, ast.Name)
        and n.annotation.id == "Any"
    ]  # fmt: skip
    assert not bad, bad
