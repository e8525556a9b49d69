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
