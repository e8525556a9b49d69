"""The main job behind ``make demo``: is FedMut flatter than FedAvg on the embedded digits, across seeds?

For each seed, FedAvg and FedMut share the Dirichlet(0.1) partition over 20 clients, the
initial model and the client sample of every round; only the algorithm differs. Every local
setting is flatfl's default (the same for both). Runs go to ``ROOT/digits-<algo>-s<seed>`` (one
safetensors file per round, client models every 10th round); then ``flatfl report`` groups the
seeds, measures every run at the last round and at equal training loss, and prints the verdict
table (also at the top of ``ROOT/report/report.html``). ROOT is the demo's own folder
(default ``checkpoints/demo``): the demo replaces its own runs and never touches anything else.

    python examples/fedavg_vs_fedmut.py [--rounds 200] [--seeds 0,1,2] [--root checkpoints/demo] [--no-report]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from flatfl.checkpoint import RUN_JSON, read_metrics
from flatfl.cli import main as flatfl

ALGOS = ("fedavg", "fedmut")


def train(algo: str, rounds: int, seed: int, out: Path) -> tuple[float, int]:
    """Train one run into ``out`` (replacing a previous demo run there); (seconds, exit code)."""
    t0 = time.perf_counter()
    args = ["train", "--dataset", "digits", "--algo", algo, "--rounds", str(rounds), "--clients", "20",
            "--frac", "0.25", "--dirichlet", "0.1", "--seed", str(seed), "--out", str(out), "--save-clients", "10",
            ]  # fmt: skip
    if (out / RUN_JSON).is_file():
        args.append("--overwrite")
    code = flatfl(args)
    return time.perf_counter() - t0, code


def _seeds(text: str) -> list[int]:
    try:
        seeds = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of seeds") from None
    if not seeds:
        raise argparse.ArgumentTypeError("at least one seed")
    return seeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200, metavar="N", help="rounds per run (default: 200)")
    ap.add_argument(
        "--seeds", type=_seeds, default=[0, 1, 2], metavar="LIST", help="comma-separated seeds (default: 0,1,2)"
    )
    ap.add_argument(
        "--root",
        type=Path,
        default=Path("checkpoints/demo"),
        metavar="DIR",
        help="the demo's folder (default: checkpoints/demo)",
    )
    ap.add_argument("--no-report", action="store_true", help="train only; skip flatfl report")
    args = ap.parse_args()

    outs: dict[tuple[str, int], Path] = {}
    secs: dict[tuple[str, int], float] = {}
    for seed in args.seeds:
        for algo in ALGOS:
            out = args.root / f"digits-{algo}-s{seed}"
            secs[(algo, seed)], code = train(algo, args.rounds, seed, out)
            if code not in (0, 1):  # 1: diverged (kept, listed by the report)
                sys.exit(code)
            outs[(algo, seed)] = out
    print(f"\ndigits, Dirichlet(0.1) over 20 clients, 5 sampled per round, {args.rounds} rounds: test accuracy")
    print(f"{'seed':>6} " + " ".join(f"{a:>16}" for a in ALGOS))
    for seed in args.seeds:
        cells = []
        for algo in ALGOS:
            m = read_metrics(outs[(algo, seed)])
            last = m[-1]
            note = "" if last["round"] == args.rounds else f" (stop {last['round']})"
            cells.append(f"{last['test_acc']:.4f}{note}".rjust(16))
        print(f"{seed:>6} " + " ".join(cells))
    print(
        f"{'s/run':>6} " + " ".join(f"{sum(secs[(a, s)] for s in args.seeds) / len(args.seeds):>16.1f}" for a in ALGOS)
    )
    if args.no_report:
        return
    report = args.root / "report"
    runs = [str(outs[(a, s)]) for a in ALGOS for s in args.seeds]
    print(f"\nflatfl report {' '.join(runs)} --out {report} --at-rounds {args.rounds} ...", flush=True)
    t0 = time.perf_counter()
    code = flatfl(["report", *runs, "--out", str(report), "--at-rounds", str(args.rounds)])
    if code != 0:
        sys.exit(code)
    print(f"\nreport ({time.perf_counter() - t0:.0f} s): {(report / 'report.html').absolute()}")


if __name__ == "__main__":
    main()
