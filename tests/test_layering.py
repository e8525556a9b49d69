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


def _path_of(dotted: str) -> Path:
    """The source path of a dotted flatfl name without suffix (``flatfl.analysis`` lives in ``analysis/``)."""
    parts = dotted.split(".")[1:]
    return ROOT / "analysis" / Path(*parts[1:]) if parts[:1] == ["analysis"] else ROOT / "flatfl" / Path(*parts)


def _package_of_module(dotted: str) -> str:
    """The package a dotted flatfl module belongs to: itself when it is a package, else its parent."""
    return dotted if _path_of(dotted).is_dir() else dotted.rsplit(".", 1)[0]


def _private_imports(path: Path, text: str | None = None) -> list[str]:
    """``from flatfl.<other package>.m import _name`` and ``m._name`` on a module ``m`` of another package of
    flatfl, in the source file ``path`` (``text``: its source, if not read from ``path``)."""
    rel = path.relative_to(ROOT).with_suffix("").parts
    package = ".".join((("flatfl", *rel) if rel[0] == "analysis" else rel)[:-1])
    tree = ast.parse(path.read_text() if text is None else text, str(path))
    private = lambda name: name.startswith("_") and not name.startswith("__")  # noqa: E731
    found, foreign = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "flatfl" or _package_of_module(source) == package:
                continue
            for alias in node.names:
                if private(alias.name):
                    found.append(f"line {node.lineno}: from {source} import {alias.name}")
                foreign[alias.asname or alias.name] = f"{source}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "flatfl" and _package_of_module(alias.name) != package:
                    foreign[alias.asname or alias.name] = alias.name
                    if any(private(p) for p in alias.name.split(".")):
                        found.append(f"line {node.lineno}: import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in foreign:
            if private(node.attr):
                found.append(f"line {node.lineno}: {node.value.id}.{node.attr} ({foreign[node.value.id]})")
    return found


def test_no_private_name_is_imported_across_packages():
    """A module of flatfl uses another package's modules through their public names only (an underscore
    name is free to change with its module); within one package (flatfl/, flatfl/runs/, ...) it may."""
    files = [p for d in ("flatfl", "analysis") for p in (ROOT / d).rglob("*.py")]
    bad = [f"{p.relative_to(ROOT)} {hit}" for p in files for hit in _private_imports(p)]
    assert len(files) > 50 and not bad, bad
    # the check itself: cross-package private imports are found, those within a package are not
    probe = "from flatfl.trainer import _on_main\nfrom flatfl import trainer\nfrom flatfl.flower.arrays import _x\n"
    probe += "from . import _y\nfrom ..runs import _z\nimport flatfl.runs._w\ntrainer._train\n"
    assert _private_imports(ROOT / "flatfl" / "flower" / "probe.py", probe) == [
        "line 1: from flatfl.trainer import _on_main",
        "line 5: from flatfl.runs import _z",
        "line 6: import flatfl.runs._w",
        "line 7: trainer._train (flatfl.trainer)",
    ]


def test_simulation_and_parallel_do_not_import_each_other():
    """The parallel client runner sees the simulation only through its protocol (no import circle)."""
    sim, parallel = _imports(ROOT / "flatfl/simulation.py"), _imports(ROOT / "flatfl/parallel.py")
    assert "flatfl.parallel" in sim and not {"flatfl.simulation", "flatfl.trainer"} & set(parallel)


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
    assert graph["flatfl.runs.timing"] == set() and graph["flatfl.runs.datacache"] <= {"flatfl.runs.timing"}
    assert graph["flatfl.runs.run"] <= {"flatfl.runs.sources", "flatfl.runs.datacache"}


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
