"""Trace estimators side by side: HVPs each needs for the same standard error.

For an unbiased estimator with budget m and variance s^2, the HVPs needed for a standard error e
are m s^2 / e^2, so at equal m the ratio of variances is the ratio of HVPs. Three operators:

* ``outliers``: a synthetic symmetric matrix (``--n`` = 1000) with a known spectrum whose top 10
  eigenvalues hold >= 90% of ||H||_F^2 (45 ... 20 over a bulk in [-0.5, 2]); variance over
  ``--repeats`` seeds, checked against the exact trace;
* ``early-round``: the Hessian of a real early-round checkpoint (checkpoints/reference/digits-fedavg
  round 1, 300 training samples, 13,706 parameters); variance over ``--repeats`` seeds;
* ``bench-cnn``: the peer bench's CNN (a wide bulk; ``--images``), expensive, so the variance is the
  mean of each run's squared standard error over ``--cnn-seeds`` seeds.

For each: the HVPs of Hutchinson, Hutch++ and the adaptive estimator relative to the better of the
first two (targets, issue #17: adaptive <= 1.1x; on ``outliers`` adaptive >= 3x fewer than
Hutchinson), how often the adaptive one deflated, and for the two with many repeats the coverage of
the exact (outliers) or pooled (early-round) trace by estimate +- 1.96 stderr.

    python bench/trace_estimators.py [--matvecs 60] [--repeats 100] [--parts outliers,early-round,bench-cnn]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from flatfl.analysis.operators import DenseOperator, HessianOperator, ModelLoss  # noqa: E402
from flatfl.analysis.trace import TRACE_ESTIMATORS  # noqa: E402


def outliers(n: int) -> tuple[DenseOperator, float]:
    g = np.random.default_rng(0)
    lam = np.concatenate([np.linspace(45, 20, 10), g.uniform(-0.5, 2.0, n - 10)])
    share = (lam[:10] ** 2).sum() / (lam**2).sum()
    assert share >= 0.9, share
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    A = (U * torch.as_tensor(lam)) @ U.T
    print(f"outliers: n={n}, top-10 share of ||H||_F^2 {share:.3f}, trace {lam.sum():.4f}")
    return DenseOperator(A), float(lam.sum())


def early_round(samples: int) -> tuple[HessianOperator, None]:
    from flatfl.runs.landscape import select_data
    from flatfl.runs.run import Run

    run, rnd = Run.of_checkpoint(ROOT / "checkpoints/reference/digits-fedavg/round_0001.safetensors")
    x, y, _ = select_data(run, "train", samples, 0)
    op = HessianOperator(ModelLoss(run.model(rnd), x, y, dtype=torch.float64))
    print(f"early-round: digits-fedavg round {rnd}, {len(y)} samples, {op.size:,} parameters, HVP {op.method}")
    return op, None


def bench_cnn(images: int) -> tuple[HessianOperator, None]:
    from hessian_vs_peers import load_problem, make_problem

    problem = Path(tempfile.mkdtemp()) / "problem.safetensors"
    make_problem(images, problem)
    model, x, y = load_problem(problem)
    op = HessianOperator(ModelLoss(model, x, y))
    print(f"bench-cnn: {op.size:,} parameters, {images} images, HVP {op.method}")
    return op, None


def compare(name: str, op, exact: float | None, m: int, seeds: int, use_stderr: bool) -> None:
    est = {k: [] for k in TRACE_ESTIMATORS}
    se = {k: [] for k in TRACE_ESTIMATORS}
    deflated = 0
    t = time.perf_counter()
    for s in range(seeds):
        for k, f in TRACE_ESTIMATORS.items():
            r = f(op, num_matvecs=m, generator=torch.Generator().manual_seed(1000 + s))
            est[k].append(r.estimate)
            se[k].append(r.stderr)
            deflated += k == "adaptive" and r.deflated
    truth = exact if exact is not None else float(np.mean(np.concatenate([est[k] for k in est])))
    var = {k: (np.mean(np.square(se[k])) if use_stderr else np.var(est[k], ddof=1)) for k in est}
    best = min(var["hutchinson"], var["hutch++"])
    how = "mean squared stderr" if use_stderr else f"variance over {seeds} seeds"
    print(f"{name} ({m} HVPs each, {how}, {time.perf_counter() - t:.0f} s):")
    for k in est:
        cover = np.mean(np.abs(np.array(est[k]) - truth) <= 1.96 * np.array(se[k]))
        print(
            f"  {k:10s} mean {np.mean(est[k]):.5g}, sd {np.sqrt(var[k]):.3g}, HVPs vs the better of "
            f"Hutchinson/Hutch++ {var[k] / best:.2f}x" + ("" if use_stderr else f", 95% coverage {100 * cover:.0f}%")
        )
    print(
        f"  adaptive deflated in {deflated}/{seeds}; "
        f"HVPs Hutchinson/adaptive {var['hutchinson'] / var['adaptive']:.2f}x"
        + (f" (exact trace {exact:.5g})" if exact is not None else "")
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--matvecs", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--cnn-seeds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--parts", default="outliers,early-round,bench-cnn")
    args = ap.parse_args()
    parts = args.parts.split(",")
    if "outliers" in parts:
        op, exact = outliers(args.n)
        compare("outliers", op, exact, args.matvecs, args.repeats, use_stderr=False)
    if "early-round" in parts:
        op, _ = early_round(args.samples)
        compare("early-round", op, None, args.matvecs, args.repeats, use_stderr=False)
    if "bench-cnn" in parts:
        op, _ = bench_cnn(args.images)
        compare("bench-cnn", op, None, args.matvecs, args.cnn_seeds, use_stderr=True)


if __name__ == "__main__":
    main()
