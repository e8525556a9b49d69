"""Helpers shared by the example sweeps: train a run quietly, measure lambda_max and the 1D widths."""

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
    (``flatfl report`` with everything else off, no matched-convergence round: report.csv's row of ``round``)."""
    with contextlib.redirect_stdout(io.StringIO()):
        code = flatfl(["report", str(run), "--out", str(out), "--at-rounds", str(round), "--samples", str(samples),
                       "--no-surface", "--no-spread", "--no-match", "--sharpness", "none", "--trace-matvecs", "0",
                       "--no-progress"])  # fmt: skip
    if code != 0:
        sys.exit(code)
    with open(out / "report.csv") as f:
        return float(next(r for r in csv.DictReader(f) if int(r["round"]) == round)["lambda_max"])


def lambda_max_direct(run: Path, round: int, samples: int = 500, tol: float = 1e-3) -> float:
    """lambda_max of ``run``'s global model at ``round`` by Lanczos (``flatfl.runs.landscape.compute``,
    top-1 only, relative residual ``tol``) on ``samples`` seeded training samples: the quick one."""
    from flatfl.checkpoint import round_path
    from flatfl.runs.landscape import LandscapeSettings, compute

    settings = LandscapeSettings(samples=samples, hessian=True, topk=1, tol=tol)
    return float(compute(round_path(run, round), settings)[0]["hessian"]["eigenvalues"][0])


def widths_direct(run: Path, round: int, samples: int = 500) -> dict[str, float | bool]:
    """The verdict's 1D basin widths of ``run``'s global model at ``round``, as ``flatfl report`` measures them.

    Li et al. (NeurIPS 2018) slices delta_k(t) = L(theta + t d_k) - L(theta) along the report's
    filter-normalised random directions (its default count, radius, grid and direction seed;
    ``flatfl.analysis.slices.random_slices``) on the same ``samples`` seeded training samples as
    :func:`lambda_max_direct`; for each of the report's thresholds tau, ``width_<tau>`` = distance
    between the first crossings of the mean curve above tau on either side of 0
    (``flatfl.analysis.slices.width``) and ``width_<tau>_censored`` = True when the curve stays below tau
    on some side of the grid (the width is then a lower bound)."""
    from flatfl.analysis.slices import random_slices, symmetric_grid, width
    from flatfl.checkpoint import round_path
    from flatfl.runs.landscape import LandscapeSettings
    from flatfl.runs.problem import of_checkpoint
    from flatfl.runs.report import ReportSettings

    rs = ReportSettings()
    ls = LandscapeSettings(samples=samples)
    obj = of_checkpoint(round_path(run, round), ls).objective
    ts = symmetric_grid(rs.slice_radius, rs.slice_points)
    s = random_slices(
        obj, ts, num_directions=rs.slice_directions, seed=ls.seed, memory_budget=ls.memory_budget_gb * 2**30
    )
    out: dict[str, float | bool] = {}
    for t in rs.widths:
        out[f"width_{t:g}"], out[f"width_{t:g}_censored"] = width(s.ts, s.mean, t)
    return out
