"""What one ``flatfl report --connect`` path costs against lambda_max + trace of the same checkpoint.

Usage (after ``python examples/fedavg_vs_fedmut.py --rounds 30 --seeds 0 --root ROOT --no-report``)::

    OMP_NUM_THREADS=1 python bench/connect_cost.py ROOT [--round 30] [--repeats 3]

On the fedavg-mean seed-0 checkpoint it times :func:`flatfl.runs.measure.measure` with the report's lambda_max and
trace settings, then one :func:`flatfl.analysis.connectivity.mode_connectivity` path at the ``--connect``
defaults (300 steps) to the fedmut seed-0 model of the same round, on the report's 1,000 analysis samples;
the first repeat is a warm-up.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from flatfl.analysis.connectivity import mode_connectivity
from flatfl.runs.measure import measure
from flatfl.runs.problem import of_checkpoint
from flatfl.runs.run import Run
from flatfl.runs.settings import ConnectivitySettings, ReportSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--round", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    ls = replace(ReportSettings().landscape, sharpness=(), surface=None)
    cs = ConnectivitySettings()
    a = args.root / "digits-fedavg-mean-s0" / f"round_{args.round:04d}.safetensors"
    b = Run.open(args.root / "digits-fedmut-s0").global_state(args.round)
    problem = of_checkpoint(a, ls)
    for rep in range(args.repeats):
        t = time.perf_counter()
        measure(problem, ls)
        m = time.perf_counter() - t
        t = time.perf_counter()
        mode_connectivity(problem.objective, b, steps=cs.steps, lr=cs.lr, seed=ls.seed * 1000 + 905)
        c = time.perf_counter() - t
        print(f"repeat {rep}: lambda_max+trace {m:.2f} s, one path ({cs.steps} steps) {c:.2f} s, ratio {c / m:.2f}")


if __name__ == "__main__":
    main()
