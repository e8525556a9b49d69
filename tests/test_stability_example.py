"""examples/fedmut_stability.py on a two-run grid: one cell that trains, one that diverges."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from flatfl import checkpoint as ckpt

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "fedmut_stability.py"


def test_stability_grid_marks_divergence_and_writes_csv_and_png(tmp_path):
    root = tmp_path / "st"
    args = ["--radii", "4", "--momenta", "0.5,0.99", "--lrs", "50", "--seeds", "0", "--rounds", "4"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--caps", "none", "--root", str(root)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(open(root / "stability.csv")))
    assert [(r["momentum"], r["cap"]) for r in rows] == [("0.5", "none"), ("0.99", "none")]
    for r in rows:
        run = root / f"a0.1-r4.0-m{r['momentum']}-lr50.0-capnone-s0"
        last = ckpt.read_metrics(run)[-1]["round"]
        assert int(r["last_round"]) == last
        if r["status"] == "diverged":  # the round after the last finite checkpoint; no lambda_max
            assert int(r["diverged_round"]) == last + 1 and r["lambda_max"] == "nan"
        else:
            assert last == 4 and float(r["lambda_max"]) > 0
    assert any(r["status"] == "diverged" for r in rows)  # lr 50, momentum 0.99 (as test_cli)
    assert (root / "stability.png").stat().st_size > 1000
