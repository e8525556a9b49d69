"""The main job behind ``make demo``: is FedMut flatter than FedAvg on the embedded digits, across seeds?

Three arms, each for every seed, sharing the Dirichlet(0.1) partition over 20 clients, the
initial model and the client sample of every round:

* ``fedmut``: FedMut as its authors' code runs it (the plain mean of the returned models);
* ``fedavg-mean``: FedAvg with FedMut's aggregation (``--unweighted``), so that it differs from
  FedMut by the mutation alone (``--algo fedmut --radius 0`` is this arm bit for bit) -- the
  reference of the headline comparison, "FedMut vs FedAvg (same aggregation)";
* ``fedavg``: FedAvg as its paper and the authors' code run it (sample-weighted mean), the second
  comparison: what the aggregation alone does.

Every local setting is flatfl's default (the same for all). Runs go to
``ROOT/digits-<arm>-s<seed>`` (one safetensors file per round, client models every 10th round);
then ``flatfl report --reference fedavg-mean`` groups the seeds, measures every run at the last
round and at equal training loss, lists what else than the seed tells each pair of groups apart,
and prints the verdict table (also at the top of ``ROOT/report/report.html``). ROOT is the demo's
own folder (default ``checkpoints/demo``): the demo replaces its own runs and never touches anything
else.

    python examples/fedavg_vs_fedmut.py [--rounds 200] [--seeds 0,1,2] [--root checkpoints/demo] [--no-report]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from flatfl.checkpoint import RUN_JSON, read_metrics
from flatfl.cli import main as flatfl

# arm (the group's label in the report) -> flatfl train flags; the first is the reference
ARMS: dict[str, list[str]] = {
    "fedavg-mean": ["--algo", "fedavg", "--unweighted"],  # FedMut's aggregation: differs by the mutation alone
    "fedmut": ["--algo", "fedmut"],  # the headline comparison: fedmut vs fedavg-mean
    "fedavg": ["--algo", "fedavg"],  # sample-weighted, as the authors' code runs FedAvg: the second comparison
}
REFERENCE = "fedavg-mean"


def train(arm: str, rounds: int, seed: int, out: Path) -> tuple[float, int]:
    """Train one run into ``out`` (replacing a previous demo run there); (seconds, exit code)."""
    t0 = time.perf_counter()
    args = ["train", "--dataset", "digits", *ARMS[arm], "--rounds", str(rounds), "--clients", "20",
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
        for arm in ARMS:
            out = args.root / f"digits-{arm}-s{seed}"
            secs[(arm, seed)], code = train(arm, args.rounds, seed, out)
            if code not in (0, 1):  # 1: diverged (kept, listed by the report)
                sys.exit(code)
            outs[(arm, seed)] = out
    print(f"\ndigits, Dirichlet(0.1) over 20 clients, 5 sampled per round, {args.rounds} rounds: test accuracy")
    print(f"{'seed':>6} " + " ".join(f"{a:>16}" for a in ARMS))
    for seed in args.seeds:
        cells = []
        for arm in ARMS:
            m = read_metrics(outs[(arm, seed)])
            last = m[-1]
            note = "" if last["round"] == args.rounds else f" (stop {last['round']})"
            cells.append(f"{last['test_acc']:.4f}{note}".rjust(16))
        print(f"{seed:>6} " + " ".join(cells))
    print(
        f"{'s/run':>6} " + " ".join(f"{sum(secs[(a, s)] for s in args.seeds) / len(args.seeds):>16.1f}" for a in ARMS)
    )
    if args.no_report:
        return
    report = args.root / "report"
    runs = [str(outs[(a, s)]) for a in ARMS for s in args.seeds]
    labels = [x for a in ARMS for x in ("--label", f"{outs[(a, args.seeds[0])]}={a}")]
    flags = ["--at-rounds", str(args.rounds), "--reference", REFERENCE, *labels]
    print(f"\nflatfl report {runs[0]} ... {runs[-1]} --out {report} {' '.join(flags)}", flush=True)
    t0 = time.perf_counter()
    code = flatfl(["report", *runs, "--out", str(report), *flags])
    if code != 0:
        sys.exit(code)
    print(f"\nreport ({time.perf_counter() - t0:.0f} s): {(report / 'report.html').absolute()}")


if __name__ == "__main__":
    main()
