"""Where FedMut is stable: a grid over radius x momentum x lr (x Dirichlet alpha), several seeds.

Every cell trains FedMut (20 clients, 25 % per round, every other flag at flatfl's default) for
each seed, with and without the mutation cap (``--mutation-cap``, a safeguard NOT in the paper);
radius 0 is FedMut without mutation, i.e. FedAvg with the plain mean, the flatness baseline. A run
is *diverged* when ``flatfl train`` stops on a non-finite value (its divergence round is the one
after the last finite checkpoint), else *finite*. For each run: final test accuracy (mean of the
last 5 rounds), lambda_max of the last finite global model by Lanczos
(``flatfl.runs.landscape.compute``, 500 training samples, relative residual 1e-3), the largest
mutation_rel = radius*||d||/||w|| met. Writes ``stability.csv``
(one line per run) and ``stability.png`` (one heat map per cap setting: accuracy over seeds,
each cell annotated with how many seeds diverged and the mean lambda_max of the others).

    python examples/fedmut_stability.py [--dataset digits] [--radii 0,2,4] [--momenta 0.5,0.9]
        [--lrs 0.01,0.05] [--dirichlet 0.1] [--seeds 0,1] [--rounds 30] [--caps none,0.05]
        [--root checkpoints/stability] [--data-root DIR] [--threads 1]
"""

from __future__ import annotations

import argparse
import csv
import itertools
from pathlib import Path

import numpy as np
import torch
from quiet_runs import lambda_max_direct, train_quiet
from tqdm.auto import tqdm

from flatfl.checkpoint import read_metrics

FIELDS = ["dirichlet", "radius", "momentum", "lr", "cap", "seed", "status", "diverged_round", "final_acc",
          "lambda_max", "max_mutation_rel", "last_round"]  # fmt: skip


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def run_cell(args: argparse.Namespace, alpha: float, radius: float, mom: float, lr: float, cap: str, seed: int) -> dict:
    name = f"a{alpha}-r{radius}-m{mom}-lr{lr}-cap{cap}-s{seed}"
    out = args.root / name
    flags = ["--dataset", args.dataset, "--clients", "20", "--frac", "0.25", "--dirichlet", str(alpha),
             "--algo", "fedmut", "--radius", str(radius), "--momentum", str(mom), "--lr", str(lr),
             "--rounds", str(args.rounds), "--seed", str(seed)]  # fmt: skip
    flags += [] if cap == "none" else ["--mutation-cap", cap]
    flags += ["--data-root", str(args.data_root)] if args.data_root else []
    code = train_quiet(flags, out)
    m = read_metrics(out)
    last = m[-1]["round"]
    rels = [r.get("mutation_rel") or 0.0 for r in m[1:]]
    return {
        "dirichlet": alpha, "radius": radius, "momentum": mom, "lr": lr, "cap": cap, "seed": seed,
        "status": "diverged" if code == 1 else "finite", "diverged_round": last + 1 if code == 1 else "",
        "final_acc": float(np.mean([r["test_acc"] for r in m[-5:]])) if last else float("nan"),
        "lambda_max": lambda_max_direct(out, last) if code == 0 else float("nan"),
        "max_mutation_rel": max(rels) if rels else 0.0, "last_round": last,
    }  # fmt: skip


def parse_row(r: dict[str, str]) -> dict:
    """A stability.csv line with its numbers as numbers."""
    out: dict = dict(r)
    for k in ("dirichlet", "radius", "momentum", "lr", "final_acc", "lambda_max"):
        out[k] = float(r[k])
    return out


def heatmap(rows: list[dict], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    caps = list(dict.fromkeys(r["cap"] for r in rows))
    cols = list(itertools.product(floats(args.dirichlet), floats(args.momenta), floats(args.lrs)))
    radii = floats(args.radii)
    fig, axes = plt.subplots(1, len(caps), figsize=(1.6 + 1.5 * len(cols) * len(caps), 1.4 + 0.7 * len(radii)))
    for ax, cap in zip(np.atleast_1d(axes), caps):
        acc = np.full((len(radii), len(cols)), np.nan)
        for i, rad in enumerate(radii):
            for j, (a, mo, lr) in enumerate(cols):
                cell = [r for r in rows if (r["radius"], r["dirichlet"], r["momentum"], r["lr"], r["cap"]) ==
                        (rad, a, mo, lr, cap)]  # fmt: skip
                if not cell:
                    continue
                ok = [r for r in cell if r["status"] == "finite"]
                acc[i, j] = np.mean([r["final_acc"] for r in ok]) if ok else 0.0
                div = [str(r["diverged_round"]) for r in cell if r["status"] == "diverged"]
                lam = f"λ {np.mean([r['lambda_max'] for r in ok]):.1f}" if ok else "—"
                acc_text = f"acc {acc[i, j]:.2f}\n" if ok else ""
                text = acc_text + f"{len(div)}/{len(cell)} div" + (f" (r{','.join(div)})" if div else "") + f"\n{lam}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="k" if acc[i, j] > 0.5 else "w")
        im = ax.imshow(acc, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(cols)), [f"α{a}\nm{mo} lr{lr}" for a, mo, lr in cols], fontsize=7)
        ax.set_yticks(range(len(radii)), [f"radius {r:g}" for r in radii], fontsize=8)
        note = " (off: the paper's FedMut)" if cap == "none" else " (safeguard, not in the paper)"
        ax.set_title(f"cap {cap}{note}", fontsize=8)
    fig.colorbar(im, ax=axes, label="final test accuracy (finite seeds; 0 = all diverged)")
    fig.suptitle(f"FedMut stability on {args.dataset}, {args.rounds} rounds, seeds {args.seeds}", fontsize=9)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", metavar="NAME", default="digits", help="any flatfl dataset (default: digits)")
    ap.add_argument(
        "--data-root", type=Path, metavar="DIR", help="where on-disk datasets live, for CIFAR (default: data)"
    )
    ap.add_argument("--radii", metavar="LIST", default="0,2,4", help="FedMut radii; 0 = no mutation (default: 0,2,4)")
    ap.add_argument("--momenta", metavar="LIST", default="0.5,0.9", help="local SGD momenta (default: 0.5,0.9)")
    ap.add_argument("--lrs", metavar="LIST", default="0.01,0.05", help="local learning rates (default: 0.01,0.05)")
    ap.add_argument(
        "--dirichlet", metavar="LIST", default="0.1", help="Dirichlet alphas of the label skew (default: 0.1)"
    )
    ap.add_argument("--seeds", metavar="LIST", default="0,1", help="run seeds (default: 0,1)")
    ap.add_argument("--rounds", metavar="N", type=int, default=30, help="rounds per run (default: 30)")
    ap.add_argument(
        "--caps", metavar="LIST", default="none,0.05", help="mutation caps rho; none = off (default: none,0.05)"
    )
    ap.add_argument(
        "--root",
        type=Path,
        default=Path("checkpoints/stability"),
        metavar="DIR",
        help="runs (overwritten), stability.csv and stability.png go here (default: checkpoints/stability)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="torch CPU threads; 1 avoids thrashing on a busy CPU (default: 1)",
    )
    ap.add_argument("--plot-only", action="store_true", help="redraw stability.png from --root's stability.csv")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.plot_only:
        with open(args.root / "stability.csv") as f:
            rows = [parse_row(r) for r in csv.DictReader(f)]
        heatmap(rows, args, args.root / "stability.png")
        print(f"wrote {args.root / 'stability.png'}")
        return
    grid = [
        (a, rad, mo, lr, cap, s)
        for a in floats(args.dirichlet)
        for rad in floats(args.radii)
        for mo in floats(args.momenta)
        for lr in floats(args.lrs)
        for cap in args.caps.split(",")
        for s in (int(v) for v in args.seeds.split(","))
        if not (rad == 0 and cap != "none")  # the cap changes nothing without mutation
    ]
    args.root.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(args.root / "stability.csv", "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        for cell in tqdm(grid, desc="runs", unit="run"):
            rows.append(run_cell(args, *cell))
            w.writerow(rows[-1])
            f.flush()
    heatmap(rows, args, args.root / "stability.png")
    print(f"wrote {args.root / 'stability.csv'} and {args.root / 'stability.png'}")


if __name__ == "__main__":
    main()
