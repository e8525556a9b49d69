"""Blocks of Hessian-vector products per pass (``matmat``) vs one product at a time.

The peer bench's model and data (``bench/hessian_vs_peers.py``: the ~0.9M-parameter CIFAR-size
CNN, briefly trained on upsampled digits, mean cross-entropy over ``--images`` images in eval
mode), on ``--device``. Two workloads, each run one-by-one (every product its own ``matvec``) and
in blocks (``matmat``: the first-order graph once per batch, the block's products through it;
``--block-mode`` auto times a batched backward, a loop and vmapped forward-over-reverse on equal
trial blocks and keeps the fastest):

* the trace with 99 HVPs (Hutch++: three blocks of 33),
* SLQ with ``--slq-runs`` x ``--slq-steps`` (10 x 80 = 800 HVPs; the runs in lockstep).

Both sides use the same seeded vectors; the script prints both estimates, their relative
difference (float summation order only; target <= 1e-6) and the time ratio. Repeats alternate
(one-by-one, block, ...) so machine noise hits both; medians are reported.

    python bench/curvature_blocks.py [--images 1000] [--device auto] [--repeats 1] [--parts trace,slq]

Targets (issue #17): >= 1.5x on this 2-core CPU, >= 5x on a GPU. Before the timed work the script
measures the ceiling (:func:`ceiling`): what sharing the first-order graph can save at most on this model
and device (on the 2-core CPU 1.53-1.63x, docs/explanation/curvature-at-scale.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hessian_vs_peers import load_problem, make_problem  # noqa: E402

from flatfl.analysis.density import slq  # noqa: E402
from flatfl.analysis.operators import HessianOperator, ModelLoss  # noqa: E402
from flatfl.analysis.trace import hutchpp  # noqa: E402


class OneByOne:
    """The operator without ``matmat``: every product is its own pass (the pre-block behaviour)."""

    def __init__(self, op: HessianOperator) -> None:
        self.op, self.size, self.dtype, self.device = op, op.size, op.dtype, op.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.op.matvec(v)


def timed(fn, device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t, out


def ceiling(op: HessianOperator, width: int = 16, repeats: int = 3) -> str:
    """The most a block can save here, measured: one product alone costs t(1) = G + B (G: the forward
    and first backward that a block shares, B: the product's own backward); in a loop block of b,
    t(b) = B + G/b per vector. From t(1) and t(width): G, B and the limit t(1)/B for b -> infinity.
    With kept graphs (``cached``) G is paid once for all products either way, so the limit is 1."""
    V = torch.randn(width, op.size, generator=torch.Generator().manual_seed(1)).to(op.device, op.dtype)
    per_vector = {}
    for b in (1, width):
        run = lambda b=b: op.objective.hvp_block(V[:b], op.method, "loop")  # noqa: E731
        runs = [timed(run, op.device)[0] for _ in range(repeats)]
        per_vector[b] = statistics.median(runs) / b
    if op.method == "cached":
        return f"ceiling: kept graphs, one product = one backward ({per_vector[1]:.3f} s): a block can only vectorize"
    shared = (per_vector[1] - per_vector[width]) * width / (width - 1)
    own = per_vector[1] - shared
    return (
        f"ceiling (loop, median of {repeats}): one product {per_vector[1]:.3f} s, in blocks of {width} "
        f"{per_vector[width]:.3f} s per vector -> shared part G {shared:.3f} s, own backward B {own:.3f} s; "
        f"at most {per_vector[1] / own:.2f}x (b -> infinity), {per_vector[1] / per_vector[width]:.2f}x at b = {width}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--parts", default="trace,slq")
    ap.add_argument("--slq-runs", type=int, default=10)
    ap.add_argument("--slq-steps", type=int, default=80)
    ap.add_argument("--block-mode", default="auto", choices=["auto", "batched", "loop", "fwd-rev"])
    ap.add_argument("--memory-budget", type=float, default=2.0, help="GiB (default: 2)")
    ap.add_argument(
        "--method",
        default="auto",
        choices=["auto", "cached", "double-backward"],
        help="HVP method; double-backward is what data too large for the memory budget get (default: auto)",
    )
    args = ap.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    problem = Path(tempfile.mkdtemp()) / "problem.safetensors"
    make_problem(args.images, problem)
    model, x, y = load_problem(problem)
    op = HessianOperator(
        ModelLoss(model, x, y, device=device),
        method=args.method,
        memory_budget=args.memory_budget * 2**30,
        block_mode=args.block_mode,
    )
    op.matvec(torch.zeros(op.size, device=device))  # warm-up (and the kept graphs, when cached)
    print(
        f"model: {op.size:,} parameters, {args.images} images on {device}; HVP method {op.method}, "
        f"at most {op.block_size()} (batched) / {op.block_size('loop')} (loop) vectors per pass, "
        f"threads {torch.get_num_threads()}",
        flush=True,
    )
    work = {
        "trace": (
            "trace, Hutch++ 99 HVPs",
            lambda o: hutchpp(o, num_matvecs=99, generator=torch.Generator().manual_seed(0)),
            lambda r: np.array([r.estimate, r.stderr]),
        ),
        "slq": (
            f"SLQ {args.slq_runs} x {args.slq_steps}",
            lambda o: slq(
                o, num_runs=args.slq_runs, num_steps=args.slq_steps, generator=torch.Generator().manual_seed(0)
            ),
            lambda r: np.array([r.moment(1)[0], r.moment(2)[0]]),
        ),
    }
    print(ceiling(op), flush=True)
    rows = []
    for part in args.parts.split(","):
        label, run, values = work[part]
        times: dict[str, list[float]] = {"one-by-one": [], "block": []}
        got = {}
        for _ in range(args.repeats):
            for side, o in (("one-by-one", OneByOne(op)), ("block", op)):
                t, r = timed(lambda o=o, run=run: run(o), device)
                times[side].append(t)
                got[side] = values(r)
        rel = float(np.max(np.abs(got["block"] - got["one-by-one"]) / np.abs(got["one-by-one"])))
        t1, tb = statistics.median(times["one-by-one"]), statistics.median(times["block"])
        chosen = {k: len(v) for k, v in op.block_seconds.items()}
        rows.append((label, t1, tb, rel, got["block"]))
        print(
            f"{label}: one-by-one {t1:.1f} s, block {tb:.1f} s, ratio {t1 / tb:.2f}x; values "
            f"{got['one-by-one']} vs {got['block']}: max rel. diff {rel:.1e}; blocks so far {chosen}",
            flush=True,
        )
    per = {k: (np.median(v) if v else float("nan")) for k, v in op.block_seconds.items()}
    print("per-vector seconds in blocks (median): " + ", ".join(f"{k} {v:.3f}" for k, v in per.items()))
    print(f"\n| workload ({device}, {args.images} images) | one-by-one s | block s | ratio | max rel. diff |")
    print("|---|---|---|---|---|")
    for label, t1, tb, rel, _ in rows:
        print(f"| {label} | {t1:.1f} | {tb:.1f} | {t1 / tb:.2f}x | {rel:.1e} |")


if __name__ == "__main__":
    main()
