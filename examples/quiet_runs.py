"""Helpers shared by the example sweeps: train a run quietly, measure lambda_max with flatfl report."""

from __future__ import annotations

import contextlib
import csv
import io
import sys
from pathlib import Path

from flatfl.cli import main as flatfl


def train_quiet(args: list[str], out: Path) -> int:
    """``flatfl train ARGS --out OUT --overwrite`` without its log; exit code 0 (done) or 1 (diverged:
    the last finite round is kept). Any other code (bad flags) stops the sweep with it."""
    with contextlib.redirect_stdout(io.StringIO()):
        code = flatfl(["train", *args, "--out", str(out), "--overwrite", "--no-progress"])
    if code not in (0, 1):
        sys.exit(code)
    return code


def lambda_max(run: Path, round: int, out: Path, samples: int = 1000) -> float:
    """lambda_max of ``run``'s global model at ``round`` by Lanczos on ``samples`` training samples
    (``flatfl report`` with everything else off)."""
    with contextlib.redirect_stdout(io.StringIO()):
        code = flatfl(["report", str(run), "--out", str(out), "--at-rounds", str(round), "--samples", str(samples),
                       "--no-surface", "--no-spread", "--sharpness", "none", "--trace-matvecs", "0",
                       "--no-progress"])  # fmt: skip
    if code != 0:
        sys.exit(code)
    with open(out / "report.csv") as f:
        return float(next(csv.DictReader(f))["lambda_max"])


def lambda_max_direct(run: Path, round: int, samples: int = 500, tol: float = 1e-3) -> float:
    """lambda_max of ``run``'s global model at ``round`` by Lanczos (``flatfl.runs.landscape.compute``,
    top-1 only, relative residual ``tol``) on ``samples`` seeded training samples: the quick one."""
    from flatfl.checkpoint import round_path
    from flatfl.runs.landscape import LandscapeSettings, compute

    settings = LandscapeSettings(samples=samples, hessian=True, topk=1, tol=tol)
    return float(compute(round_path(run, round), settings)[0]["hessian"]["eigenvalues"][0])
