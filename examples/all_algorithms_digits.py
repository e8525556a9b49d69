"""Every algorithm on the embedded digits (Dirichlet 0.1 by default, 20 clients, 5 per round), several seeds.

Trains each (algorithm, seed) into ``--root/digits-<algo>-s<seed>``, then measures the final
global model with ``flatfl report`` (lambda_max by Lanczos on 1,000 training samples) and prints
one table: mean +- std over seeds of the last-10-rounds test accuracy and of lambda_max. A run
that diverges (flatfl stops it and keeps its last finite round) is listed, not averaged.

    python examples/all_algorithms_digits.py [--seeds 0,1,2] [--rounds 200] [--root checkpoints/all]
        [--algos fedavg,fedmut,...] [--dirichlet 0.1] [--momentum M]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from quiet_runs import lambda_max, train_quiet

from flatfl.checkpoint import read_metrics

ALGOS = ["fedavg", "fedmut", "fedprox", "scaffold", "clusamp", "fedcluster", "feddf", "fedgen", "fedaux"]
COMMON = ["--dataset", "digits", "--clients", "20", "--frac", "0.25"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2", metavar="LIST", help="comma-separated run seeds (default: 0,1,2)")
    ap.add_argument("--rounds", type=int, default=200, metavar="N", help="rounds per run (default: 200)")
    ap.add_argument(
        "--root",
        type=Path,
        default=Path("checkpoints/all"),
        metavar="DIR",
        help="runs go to DIR/digits-ALGO-sSEED, each overwritten (default: checkpoints/all)",
    )
    ap.add_argument(
        "--algos",
        default=",".join(ALGOS),
        metavar="LIST",
        help=f"comma-separated algorithms (default: {','.join(ALGOS)})",
    )
    ap.add_argument("--dirichlet", default="0.1", metavar="ALPHA", help="label-skew concentration alpha (default: 0.1)")
    ap.add_argument(
        "--momentum",
        metavar="M",
        help="local SGD momentum of every algorithm (default: flatfl's, 0.5; the README's tables: 0.9)",
    )
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    algos = args.algos.split(",")
    rows = {}
    for algo in algos:
        for seed in seeds:
            out = args.root / f"digits-{algo}-s{seed}"
            mom = ["--momentum", args.momentum] if args.momentum else []
            train_quiet([*COMMON, "--dirichlet", args.dirichlet, "--algo", algo, "--rounds", str(args.rounds),
                         "--seed", str(seed), *mom], out)  # fmt: skip
            m = read_metrics(out)
            last = m[-1]["round"]
            acc = float(np.mean([r["test_acc"] for r in m[-10:]]))
            lam = lambda_max(out, last, args.root / f"report-{algo}-s{seed}")
            rows[(algo, seed)] = (acc, lam, last)
            note = "" if last == args.rounds else f"  (diverged: last finite round {last})"
            print(f"{algo:>10} seed {seed}: last-10 acc {acc:.4f}  lambda_max {lam:.3f}{note}", flush=True)
    print()
    print(f"digits, Dirichlet({args.dirichlet}), 20 clients, 5 per round, {args.rounds} rounds, seeds {args.seeds}")
    print(f"{'algorithm':>10} {'last-10 test acc':>20} {'lambda_max (round ' + str(args.rounds) + ')':>26}")
    for algo in algos:
        ok = [s for s in seeds if rows[(algo, s)][2] == args.rounds]
        div = [s for s in seeds if s not in ok]
        a = np.array([rows[(algo, s)][0] for s in ok] or [np.nan])
        lam = np.array([rows[(algo, s)][1] for s in ok] or [np.nan])
        extra = f"   diverged: seed(s) {div}" if div else ""
        print(f"{algo:>10} {a.mean():>12.4f} +- {a.std():.4f} {lam.mean():>18.3f} +- {lam.std():.3f}{extra}")


if __name__ == "__main__":
    main()
