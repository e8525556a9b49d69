"""flatfl's 2D loss surface vs the ``loss-landscapes`` package, side by side in one run.

Same model (the ~0.9M-parameter CIFAR-size CNN of ``bench/hessian_vs_peers.py``, briefly
trained), same data (1,000 3x32x32 images), same loss (mean cross-entropy, eval mode) and the
*same two directions*: a 21x21 filter-normalised random plane, a, b in [-1, 1] (step 0.1).
The package has no way to take given directions in ``random_plane``, so it runs through its
``planar_interpolation`` from theta - d1 - d2 with end points 2.1 d1 and 2.1 d2 away (step
0.1 per grid step), the way ``random_plane`` walks the plane internally. Its walk evaluates
even-numbered columns one step further along d2 than odd ones (b in [-0.9, 1.1] instead of
[-1, 1]); values are compared at the points both tools evaluate.

Each measurement runs in its own subprocess so its peak memory (RSS) is its own:

* ``package``: loss-landscapes as documented (its ``Loss`` metric runs the model with
  autograd on, one forward over all images per point);
* ``package-nograd``: the same under ``torch.no_grad()`` (a fairer floor for it), on the first
  3 columns only (63 points), per-point time extrapolated;
* ``flatfl``: ``analysis.surfaces.evaluate_grid`` as the CLI runs it (batches of 250; chunks
  of grid points within ``--memory-budget``; vmap over a chunk or a loop over its points,
  whichever its first points measure faster), ``flatfl-vmap`` forcing vmap, and
  ``flatfl-1pt`` with a budget too small for two points (one point per chunk: the fallback).
  Loop points run in channels-last layout (conv weights and image batches), ~1.5x faster
  convolutions on a CPU;
* one plain no-grad forward pass over the 1,000 images (batches of 250, the model as given,
  and again in channels-last layout) -- the floor for one grid point -- timed inside the
  ``flatfl`` worker after every chunk, as many passes as points just evaluated, so that the
  machine's drift cancels in the ratio.

    pip install -e '.[bench]'
    python bench/surface_vs_loss_landscapes.py [--images 1000] [--grid 21] [--memory-budget 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent.parent))
sys.path.insert(0, str(HERE.parent))

from hessian_vs_peers import load_problem, make_problem, peak_rss_mb  # noqa: E402


def directions(model, x, y):
    from flatfl.analysis import objective, random_directions  # the public entry users take

    obj = objective(model, (x, y))
    d1, d2 = random_directions(obj, 2, torch.Generator().manual_seed(0))
    return obj, d1, d2


def worker(task: str, problem: Path, grid: int, budget_gb: float, out: Path) -> dict:
    torch.manual_seed(0)
    model, x, y = load_problem(problem)
    obj, d1, d2 = directions(model, x, y)
    ax = np.linspace(-1, 1, grid)
    step = float(ax[1] - ax[0])
    t0 = time.perf_counter()
    if task.startswith("flatfl"):
        from flatfl.analysis import evaluate_grid
        from flatfl.analysis.surfaces import points_per_chunk

        budget = budget_gb * 2**30 if task != "flatfl-1pt" else 1.5 * (obj.size * 4)  # < 2 points' parameters
        chunk = points_per_chunk(obj, budget)
        xcl = x.contiguous(memory_format=torch.channels_last)
        mcl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        side = {"forward": 0.0, "forward_cl": 0.0, "points": 0}
        last = [0]

        def plain(m, xx):
            with torch.no_grad():
                return sum(
                    F.cross_entropy(m(xx[i : i + 250]), y[i : i + 250], reduction="sum") for i in range(0, len(y), 250)
                )

        def interleave(surf, done, total):
            # as many plain forward passes as grid points just evaluated, timed apart (drift cancels)
            k, last[0] = done - last[0], done
            t = time.perf_counter()
            for _ in range(k):
                plain(model, x)
            side["forward"] += time.perf_counter() - t
            t = time.perf_counter()
            for _ in range(k):
                plain(mcl, xcl)
            side["forward_cl"] += time.perf_counter() - t
            side["points"] += k

        vec = True if task == "flatfl-vmap" else None
        t0 = time.perf_counter()
        s = evaluate_grid(obj, [d1, d2], ax, ax, memory_budget=budget, vectorize=vec, on_chunk=interleave)
        sec = time.perf_counter() - t0 - side["forward"] - side["forward_cl"]
        np.save(out, s.loss)
        return {
            "seconds": sec,
            "seconds_per_point": sec / grid**2,
            "forward_per_point": side["forward"] / side["points"],
            "forward_cl_per_point": side["forward_cl"] / side["points"],
            "peak_mb": peak_rss_mb(),
            "chunk": chunk,
        }
    if task.startswith("package"):
        import loss_landscapes
        import loss_landscapes.metrics

        theta = obj.flat()

        def with_params(flat):
            m = copy.deepcopy(model)
            torch.nn.utils.vector_to_parameters(flat, m.parameters())
            return m.eval()

        start = theta - d1 - d2
        reach = step * grid
        metric = loss_landscapes.metrics.Loss(torch.nn.CrossEntropyLoss(), x, y)
        if task == "package":
            a, b, c = with_params(start), with_params(start + reach * d1), with_params(start + reach * d2)
            t0 = time.perf_counter()
            vals = loss_landscapes.planar_interpolation(a, b, c, metric, steps=grid, deepcopy_model=False)
            sec = time.perf_counter() - t0
            np.save(out, np.asarray(vals))
            return {"seconds": sec, "seconds_per_point": sec / grid**2, "points": grid**2, "peak_mb": peak_rss_mb()}
        # package-nograd: its per-point work (the metric on the wrapped model) under no_grad, on the first
        # 30 points of the grid, parameters set outside the timing (in its favour)
        from loss_landscapes.model_interface.model_wrapper import wrap_model

        m = with_params(theta)
        wrapper = wrap_model(m)
        sec = 0.0
        pts = [(i, j) for i in range(grid) for j in range(grid)][:30]
        for i, j in pts:
            torch.nn.utils.vector_to_parameters(theta + float(ax[i]) * d1 + float(ax[j]) * d2, m.parameters())
            t = time.perf_counter()
            with torch.no_grad():
                metric(wrapper)
            sec += time.perf_counter() - t
        return {"seconds": sec, "seconds_per_point": sec / len(pts), "points": len(pts), "peak_mb": peak_rss_mb()}
    raise SystemExit(f"unknown task {task}")


def run_worker(task: str, problem: Path, grid: int, budget: float, out: Path) -> dict:
    cmd = [sys.executable, str(HERE), "--worker", task, "--problem", str(problem), "--grid", str(grid),
           "--memory-budget", str(budget), "--result", str(out)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{task} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--grid", type=int, default=21)
    ap.add_argument("--memory-budget", type=float, default=2.0, metavar="GB", help="flatfl's chunk budget")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--problem", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.problem, args.grid, args.memory_budget, args.result)))
        return

    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        problem = tmp / "problem.safetensors"
        make_problem(args.images, problem)
        model, x, y = load_problem(problem)
        n = sum(p.numel() for p in model.parameters())
        print(f"model: {n:,} parameters; data: {len(y)} images 3x32x32; grid {args.grid}x{args.grid}; "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
        res = {}
        for task in ("flatfl", "flatfl-vmap", "flatfl-1pt", "package", "package-nograd"):
            print(f"  running {task} ...", flush=True)
            res[task] = run_worker(task, problem, args.grid, args.memory_budget, tmp / f"{task}.npy")
        ff = np.load(tmp / "flatfl.npy")
        f1 = np.load(tmp / "flatfl-1pt.npy")
        pk = np.load(tmp / "package.npy")
        # package column i: odd i at b = -1 + 0.1 j, even i at b = -1 + 0.1 (j + 1)
        diffs = []
        for i in range(args.grid):
            if i % 2:
                diffs.append(np.abs(pk[i] - ff[i]) / np.abs(ff[i]))
            else:
                diffs.append(np.abs(pk[i][:-1] - ff[i][1:]) / np.abs(ff[i][1:]))
        agree = float(np.max(np.concatenate(diffs)))
        fwd = res["flatfl"]["forward_per_point"]
        fwd_cl = res["flatfl"]["forward_cl_per_point"]
        print()
        print(f"{'':28} {'s/point':>9} {'total s':>9} {'peak RSS MB':>12}")
        for t in ("flatfl", "flatfl-vmap", "flatfl-1pt", "package", "package-nograd"):
            r = res[t]
            tot = r["seconds"] if t != "package-nograd" else r["seconds_per_point"] * args.grid**2
            print(f"{t:28} {r['seconds_per_point']:>9.4f} {tot:>9.1f} {r['peak_mb']:>12.0f}"
                  + ("  (first 30 points)" if t == "package-nograd" else ""))  # fmt: skip
        print(f"{'one plain forward pass':28} {fwd:>9.4f}   (interleaved with flatfl's chunks)")
        print(f"{'  same, channels-last':28} {fwd_cl:>9.4f}")
        print()
        print(
            f"values: max relative difference flatfl vs loss-landscapes {agree:.2e} over the points both evaluate;"
            f" flatfl with one point per chunk vs vmap chunks: {float(np.max(np.abs(f1 - ff) / np.abs(ff))):.1e}"
        )
        print(
            f"flatfl chunk: {res['flatfl']['chunk']} points within {args.memory_budget} GB; "
            f"with a budget below two points' parameters: {res['flatfl-1pt']['chunk']}"
        )
        sp = res["flatfl"]["seconds_per_point"]
        ratio = res["package"]["seconds_per_point"] / sp
        print(f"speed-up vs loss-landscapes as documented: {ratio:.2f}x (target >= 1.5)")
        print(f"speed-up vs loss-landscapes under no_grad: {res['package-nograd']['seconds_per_point'] / sp:.2f}x")
        print(f"flatfl per point / one plain forward pass: {sp / fwd:.2f} (target <= 1.1); "
              f"/ one channels-last forward pass: {sp / fwd_cl:.2f}")  # fmt: skip
        print(f"peak memory flatfl / package: {res['flatfl']['peak_mb'] / res['package']['peak_mb']:.2f}")


if __name__ == "__main__":
    main()
