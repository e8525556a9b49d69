"""The report's 1D slices stage before and after the faster point evaluation (issue 28 §4), side by side.

The demo's setting: a digits checkpoint (``SmallCNN``, the reference run ``checkpoints/reference/digits-fedavg``
by default), ``flatfl report``'s defaults -- 1,000 training samples in batches of 250, float32, 10 directions,
t in [-1, 1] with 20 points per side (401 loss evaluations with the origin shared). In one process, after one
untimed warm-up of each, ``--repeats`` pairs interleaved (before, after, after, before, ...: a trend in the
machine's load hits both alike):

* before -- ``random_slices(fast=False)``: one ``evaluate_grid`` per direction, its vmap-or-loop choice timed
  again each time, every point through ``torch.func.functional_call`` once per batch;
* after -- ``random_slices(fast=True)``: the points of all directions through one plan, on a CPU one point
  at a time on a private copy of the model written in place, its convolutions' outputs in channels-last
  layout (:mod:`flatfl.analysis.private`).

Prints each timing, the median ratio, the largest relative difference of the losses, and the widths.

    OMP_NUM_THREADS=1 python bench/slices_cost.py [--repeats 3] [--checkpoint FILE] [--samples 1000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from flatfl.analysis.slices import random_slices, symmetric_grid, width
from flatfl.runs.landscape import LandscapeSettings
from flatfl.runs.problem import of_checkpoint

CKPT = Path(__file__).resolve().parents[1] / "checkpoints/reference/digits-fedavg/round_0005.safetensors"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=CKPT, help="a flatfl checkpoint (default: the digits reference)")
    ap.add_argument("--samples", type=int, default=1000, help="analysis samples (default: 1000, the report's)")
    ap.add_argument("--directions", type=int, default=10, help="slice directions (default: 10, the report's)")
    ap.add_argument("--points", type=int, default=20, help="points per side of 0 (default: 20, the report's)")
    ap.add_argument("--repeats", type=int, default=3, help="before/after pairs (default: 3)")
    args = ap.parse_args()
    obj = of_checkpoint(args.checkpoint, LandscapeSettings(samples=args.samples)).objective
    ts = symmetric_grid(1.0, args.points)
    kw = {"num_directions": args.directions, "seed": 0}
    head = f"{args.checkpoint.name}: {obj.size:,} parameters, {obj.n} samples in {len(obj.batches)} batches"
    threads = torch.get_num_threads()
    print(f"{head}, {obj.dtype}, {obj.device}, {threads} thread(s); {args.directions} x {len(ts)} points")
    res = {fast: random_slices(obj, ts, fast=fast, **kw) for fast in (False, True)}  # warm-up, not timed
    secs: dict[bool, list[float]] = {False: [], True: []}
    for i in range(args.repeats):
        for fast in (False, True) if i % 2 == 0 else (True, False):
            t0 = time.perf_counter()
            res[fast] = random_slices(obj, ts, fast=fast, **kw)
            secs[fast].append(time.perf_counter() - t0)
            print(f"  {'after ' if fast else 'before'} {secs[fast][-1]:7.2f} s", flush=True)
    b, a = statistics.median(secs[False]), statistics.median(secs[True])
    evals = args.directions * (len(ts) - 1) + 1
    print(f"slices stage: before {b:.2f} s, after {a:.2f} s (median of {args.repeats}; {1e3 * b / evals:.1f} vs "
          f"{1e3 * a / evals:.1f} ms per point): before/after = {b / a:.2f}x")  # fmt: skip
    old, new = res[False], res[True]
    rel = float(np.max(np.abs(new.loss - old.loss) / np.abs(old.loss)))
    print(f"largest relative difference of the losses: {rel:.2e}; accuracies equal: "
          f"{np.array_equal(new.accuracy, old.accuracy)}")  # fmt: skip
    for tau in (0.1, 1.0):
        print(f"width at {tau:g}: before {width(ts, old.mean, tau)}, after {width(ts, new.mean, tau)}")


if __name__ == "__main__":
    main()
