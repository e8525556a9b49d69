"""The main job behind ``make demo``: FedAvg vs FedMut on the embedded digits, side by side.

Both runs share the seed, so they share the Dirichlet(0.1) partition over 20 clients, the
initial model and the client sample of every round; only the algorithm differs. Each run
is written to ``checkpoints/digits-<algo>-s<seed>`` (one safetensors file per round, client
models every 10th round) for the analysis commands to read; then ``flatfl report`` compares
them (curvature, sharpness and surfaces at the middle and last round, spread of the mutants)
in ``checkpoints/report-digits-s<seed>/report.html``.

    python examples/fedavg_vs_fedmut.py [--rounds 200] [--seed 0] [--no-report]
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from flatfl.checkpoint import read_metrics
from flatfl.cli import main as flatfl


def run(algo: str, rounds: int, seed: int, out: Path) -> float:
    t0 = time.perf_counter()
    code = flatfl(
        [
            "train",
            "--dataset",
            "digits",
            "--algo",
            algo,
            "--rounds",
            str(rounds),
            "--clients",
            "20",
            "--frac",
            "0.25",
            "--dirichlet",
            "0.1",
            "--seed",
            str(seed),
            "--out",
            str(out),
            "--overwrite",
            "--save-clients",
            "10",
        ]
    )
    if code != 0:
        sys.exit(code)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200, help="rounds per run (default: 200)")
    ap.add_argument("--seed", type=int, default=0, help="shared seed (default: 0)")
    ap.add_argument("--root", type=Path, default=Path("checkpoints"), help="where runs go (default: checkpoints)")
    ap.add_argument("--no-report", action="store_true", help="train only; skip flatfl report")
    args = ap.parse_args()

    outs, secs = {}, {}
    for algo in ("fedavg", "fedmut"):
        outs[algo] = args.root / f"digits-{algo}-s{args.seed}"
        secs[algo] = run(algo, args.rounds, args.seed, outs[algo])
    m = {a: {r["round"]: r for r in read_metrics(outs[a])} for a in outs}

    marks = sorted({r for r in (1, 10, 25, 50, 100, 150, 200, 300, 500) if r < args.rounds} | {args.rounds})
    print()
    print(f"digits, Dirichlet(0.1) over 20 clients, 5 sampled per round, seed {args.seed}: test accuracy")
    print(f"{'round':>8} {'FedAvg':>8} {'FedMut':>8}")
    for r in marks:
        print(f"{r:>8} {m['fedavg'][r]['test_acc']:>8.4f} {m['fedmut'][r]['test_acc']:>8.4f}")
    last = range(max(1, args.rounds - 9), args.rounds + 1)
    avg = {a: sum(m[a][r]["test_acc"] for r in last) / len(last) for a in m}
    best = {a: max(v["test_acc"] for k, v in m[a].items() if k > 0) for a in m}
    print(f"{'last-10':>8} {avg['fedavg']:>8.4f} {avg['fedmut']:>8.4f}   (mean over the last 10 rounds)")
    print(f"{'best':>8} {best['fedavg']:>8.4f} {best['fedmut']:>8.4f}")
    print(f"{'seconds':>8} {secs['fedavg']:>8.1f} {secs['fedmut']:>8.1f}")
    print(f"runs: {outs['fedavg']}  {outs['fedmut']}")
    if args.no_report:
        return
    report = args.root / f"report-digits-s{args.seed}"
    print(f"\nflatfl report {outs['fedavg']} {outs['fedmut']} --out {report} ...", flush=True)
    t0 = time.perf_counter()
    code = flatfl(["report", str(outs["fedavg"]), str(outs["fedmut"]), "--out", str(report)])
    if code != 0:
        sys.exit(code)
    rows = list(csv.DictReader(open(report / "report.csv")))
    print(f"\n{'run':>8} {'round':>6} {'test acc':>9} {'lambda_max':>11} {'trace':>15} {'SAM':>9}")
    for r in rows:
        print(
            f"{r['run']:>8} {r['round']:>6} {float(r['test_acc']):>9.4f} {float(r['lambda_max']):>11.4g} "
            f"{float(r['trace']):>8.4g} +-{float(r['trace_stderr']):<5.2g} {float(r['sharpness_sam']):>9.4g}"
        )
    print(f"report ({time.perf_counter() - t0:.0f} s): {(report / 'report.html').resolve()}")


if __name__ == "__main__":
    main()
