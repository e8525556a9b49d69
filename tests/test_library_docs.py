"""docs/library.md and the library examples run as written, so they cannot rot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_every_code_block_of_library_md_runs(tmp_path, monkeypatch, capsys):
    blocks = _blocks((ROOT / "docs/library.md").read_text())
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(blocks):  # one namespace, in order: later blocks use earlier names
        exec(compile(block, f"docs/library.md block {i + 1}", "exec"), namespace)
    assert capsys.readouterr().out.strip()  # the blocks print their results
    assert namespace["top"].values.shape == (1,) and namespace["line"].loss.shape == (11,)


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("library_regression.py", ["--samples", "128"]),
        ("library_transformer.py", ["--sequences", "32"]),
        ("library_resnet18.py", ["--images", "4", "--vectors", "4", "--probes", "2"]),
    ],
)
def test_library_examples_run(tmp_path, script, args):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args, "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert pngs, proc.stdout
    help_ = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--help"], capture_output=True, text=True)
    assert help_.returncode == 0 and "--out" in help_.stdout
