"""Training throughput of one process vs ``torchrun`` ranks on this machine's CPU cores.

The same FedMut run (digits, 20 clients, ``--frac`` of them per round, E = 5, ``--rounds``
rounds) three ways, each a fresh ``flatfl train`` process: one process with all its default
threads, one process with one thread, and ``torchrun --nproc_per_node=N`` with one thread per
rank (torchrun's default). Reported: the median ``round_time`` from ``metrics.jsonl``
(sampling, dispatch, local training, the all_gather of client models, aggregation) and the
whole command's wall time, with ratios against the one-process runs. The run directories of the
one-thread process and of torchrun are also compared byte for byte (they must be equal).

    python bench/torchrun_scaling.py [--nproc 2] [--rounds 30] [--frac 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def median_round(out: Path) -> float:
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["round_time"] for r in lines if r["round"] > 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--frac", default="0.5")
    args = ap.parse_args()
    flags = ["train", "--algo", "fedmut", "--clients", "20", "--frac", args.frac, "--rounds", str(args.rounds),
             "--no-progress", "--device", "cpu"]  # fmt: skip
    root = Path(tempfile.mkdtemp())
    base = dict(os.environ)
    base.pop("OMP_NUM_THREADS", None)
    one_thread = dict(base, OMP_NUM_THREADS="1")
    py = [sys.executable, "-m", "flatfl"]
    tr = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}", "--master_addr=127.0.0.1",
          "--master_port=29571", "-m", "flatfl"]  # fmt: skip
    rows = {
        "1 process, default threads": run([*py, *flags, "--out", str(root / "a")], base),
        "1 process, 1 thread": run([*py, *flags, "--out", str(root / "b")], one_thread),
        f"torchrun {args.nproc} ranks x 1 thread": run([*tr, *flags, "--out", str(root / "c")], one_thread),
    }
    rounds = {k: median_round(root / d) for k, d in zip(rows, "abc")}
    same = all(
        (root / "b" / f.name).read_bytes() == f.read_bytes()
        for f in (root / "c").iterdir()
        if f.name not in ("metrics.jsonl", "run.json")
    )
    print(f"FedMut on digits, 20 clients, frac {args.frac}, E = 5, {args.rounds} rounds; {os.cpu_count()} CPUs")
    first = next(iter(rounds.values()))
    for k in rows:
        print(
            f"  {k:>32}: round {1000 * rounds[k]:7.1f} ms ({first / rounds[k]:.2f}x)   whole command {rows[k]:6.1f} s"
        )
    print(f"  torchrun files equal the 1-thread process's: {same}")


if __name__ == "__main__":
    main()
