"""Bit-identity of seeded CPU runs across two versions of flatfl (a refactoring's check).

Train the same tiny digits runs with two source trees and compare every tensor of every round,
client and state file, plus run.json, partition.json and metrics.jsonl (wall times left out)::

    git archive main flatfl | tar -x -C OLD_TREE                        # the version to compare with
    python bench/same_runs.py train --src OLD_TREE --out /tmp/runs-old
    python bench/same_runs.py train --src .        --out /tmp/runs-new
    python bench/same_runs.py compare /tmp/runs-old /tmp/runs-new       # exit 1 when anything differs

Each run: ``flatfl train --algo A --clients 10 --frac 0.3 --rounds 3 --local-epochs 1 --seed 3 --threads 1``
for the algorithms below (the ones with their own round structure, and FedAvg/FedMut/SCAFFOLD/FedSAM).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ALGOS = ("fedavg", "fedmut", "scaffold", "feddf", "fedgen", "fedaux", "fedcluster", "fedsam")
FLAGS = ["--clients", "10", "--frac", "0.3", "--rounds", "3", "--local-epochs", "1", "--seed", "3", "--threads", "1"]
TIMES = ("wall_time", "round_time")


def train(src: Path, out: Path) -> None:
    """One run per algorithm with the flatfl package found in ``src`` (run from there)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(src.resolve()))
    for algo in ALGOS:
        cmd = [sys.executable, "-m", "flatfl", "train", "--algo", algo, *FLAGS, "--no-progress", "--device", "cpu"]
        subprocess.run([*cmd, "--out", str((out / algo).resolve())], cwd=src, env=env, check=True)


def _metrics(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMES} for line in path.read_text().splitlines()]


def compare(old: Path, new: Path) -> int:
    """Number of differing files (tensors compared exactly, dtype included)."""
    from safetensors.torch import load_file

    bad = 0
    for run in sorted(p for p in old.iterdir() if p.is_dir()):
        other = new / run.name
        names = sorted(f.name for f in run.glob("*.safetensors"))
        for name in names:
            a, b = load_file(run / name), load_file(other / name)
            same = a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and a[k].equal(b[k]) for k in a)
            bad += not same
            print(f"{'same' if same else 'DIFFERENT'}: {run.name}/{name}")
        for name in ("run.json", "partition.json"):
            same = (run / name).read_bytes() == (other / name).read_bytes()
            bad += not same
            print(f"{'same' if same else 'DIFFERENT'}: {run.name}/{name}")
        same = _metrics(run / "metrics.jsonl") == _metrics(other / "metrics.jsonl")
        bad += not same
        print(f"{'same' if same else 'DIFFERENT'}: {run.name}/metrics.jsonl (times left out)")
    print("all identical" if bad == 0 else f"{bad} files differ")
    return bad


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--src", type=Path, required=True, help="folder holding the flatfl package to run")
    t.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("compare")
    c.add_argument("old", type=Path)
    c.add_argument("new", type=Path)
    a = p.parse_args()
    if a.cmd == "train":
        train(a.src, a.out)
        return 0
    return int(compare(a.old, a.new) > 0)


if __name__ == "__main__":
    raise SystemExit(main())
