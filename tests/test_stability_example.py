"""examples/fedmut_stability.py on a tiny grid: cells that train, one that diverges, and the 1D widths."""

from __future__ import annotations

import contextlib
import csv
import io
import math
import subprocess
import sys
from pathlib import Path

from flatfl import checkpoint as ckpt
from flatfl.cli import main as flatfl

CENSORED = ("width_0.1_censored", "width_1_censored")
SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "fedmut_stability.py"


def report_row(run: Path, rnd: int, out: Path) -> dict[str, str]:
    """report.csv's row of ``run`` at ``rnd`` from ``flatfl report`` on 500 training samples, widths only."""
    with contextlib.redirect_stdout(io.StringIO()):
        code = flatfl(["report", str(run), "--out", str(out), "--at-rounds", str(rnd), "--samples", "500",
                       "--no-surface", "--no-spread", "--no-match", "--no-hessian", "--sharpness", "none",
                       "--trace-matvecs", "0", "--no-progress"])  # fmt: skip
    assert code == 0
    return next(r for r in csv.DictReader(open(out / "report.csv")) if int(r["round"]) == rnd)


def test_stability_grid_marks_divergence_and_writes_widths_csv_and_png(tmp_path):
    root = tmp_path / "st"
    args = ["--radii", "0,4", "--momenta", "0.9", "--lrs", "0.05,50", "--seeds", "0", "--rounds", "4"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--caps", "none", "--root", str(root)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(open(root / "stability.csv")))
    cells = [("0.0", "0.05"), ("0.0", "50.0"), ("4.0", "0.05"), ("4.0", "50.0")]
    assert [(r["radius"], r["lr"]) for r in rows] == cells
    checked, compared = 0, False
    for r in rows:
        run = root / f"a0.1-r{r['radius']}-m0.9-lr{r['lr']}-capnone-s0"
        last = ckpt.read_metrics(run)[-1]["round"]
        assert int(r["last_round"]) == last
        if r["status"] == "diverged":  # the round after the last finite checkpoint; no lambda_max, no width
            assert int(r["diverged_round"]) == last + 1
            assert [r[k] for k in ("lambda_max", "width_0.1", "width_1")] == ["nan"] * 3
            continue
        assert last == 4 and float(r["lambda_max"]) > 0
        w01, w1 = float(r["width_0.1"]), float(r["width_1"])
        assert 0 < w01 <= w1 <= 2.0  # a higher threshold is crossed farther out; t in [-1, 1]
        if (r["radius"], r["lr"]) == ("0.0", "0.05"):  # the verdict's widths of it on the same 500 samples
            assert r["width_0.1_censored"] == "False"  # a width measured inside the grid, not its end
            rep = report_row(run, last, tmp_path / "rep")
            assert [r[k] for k in CENSORED] == [rep[k] for k in CENSORED]
            assert all(math.isclose(float(r[k]), float(rep[k]), rel_tol=1e-6) for k in ("width_0.1", "width_1"))
            compared = True
        checked += 1
    assert checked == 3 and compared and any(r["status"] == "diverged" for r in rows)  # lr 50 with radius 4 diverges
    # one ratio line per FedMut cell against radius 0 of its column
    assert proc.stdout.count("vs radius 0: lambda_max x") == 2, proc.stdout
    assert (root / "stability.png").stat().st_size > 1000
