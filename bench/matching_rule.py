"""Measure matched-round rules on noisy digits runs: naive first crossing vs settled moving median.

Usage: python bench/matching_rule.py ALPHA [ROOT], with runs ROOT/a{ALPHA}-{algo}-s{seed} of 150 rounds from
    flatfl train --dataset digits --clients 20 --frac 0.15 --dirichlet ALPHA --local-epochs 2 --lr 0.1 \
        --rounds 150 --algo fedavg --seed S --out ROOT/aALPHA-fedavg-sS
The numbers are in docs/landscapes.md ("Matched convergence").
"""

import glob
import math
import sys
from pathlib import Path

import numpy as np

from flatfl.runs.matching import LossCurve, matched_index, moving_median, settled_index
from flatfl.runs.problem import select_data
from flatfl.runs.run import Run

root = Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/match_runs")
alpha = sys.argv[1]
runs = sorted(glob.glob(str(root / f"a{alpha}-*-s*")))
runs = [r for r in runs if not r.endswith(".log") and (Path(r) / "round_0150.safetensors").exists()]
curves = {}
for p in runs:
    run = Run.open(p)
    x, y, _ = select_data(run, "train", 1000, 0)[:3]
    c = LossCurve(run, x, y, root / "cache" / (Path(p).name + ".json"), {"d": "train1000s0"})
    rs = run.rounds()
    curves[Path(p).name] = (rs, np.array([c(r) for r in rs]))
    c.save()
T = 150


def after_stats(rs, L, r, level, k=10):
    i = rs.index(r)
    nxt = L[i + 1 : i + 1 + k]
    rest = L[i:]
    return float(np.median(nxt)) if len(nxt) else float("nan"), float(np.mean(rest > level))


print(f"alpha {alpha}: runs {len(curves)}")
for n, (_rs, L) in curves.items():
    d = np.diff(L[1:])
    print(
        f"  {n}: L0 {L[0]:.3f} ln10 {math.log(10):.3f}  L1 {L[1]:.3f} max(L[1:15]) {L[1:16].max():.3f} "
        f"final {L[-1]:.3f} min {L[1:].min():.3f}  "
        f"round-to-round |dL| median {np.median(abs(d)):.3f} 90% {np.quantile(abs(d), 0.9):.3f}"
    )
for w in (1, 3, 5, 7, 9):
    sm = {n: moving_median(L[1:], w) for n, (rs, L) in curves.items()}
    level_raw = max(L[-1] for rs, L in curves.values())
    level = max(s[-1] for s in sm.values())
    print(f"window {w}: default level (max final smoothed) {level:.4f} (max final raw {level_raw:.4f})")
    for n, (rs, L) in curves.items():
        rr, LL = rs[1:], L[1:]
        first = next((r for r, v in zip(rr, LL) if v <= level_raw), None) if w == 1 else None
        i = settled_index(sm[n], level)
        st = rr[i] if i is not None else None
        fc_sm = next((r for r, v in zip(rr, sm[n]) if v <= level), None)
        msg = f"    {n:22s}"
        if w == 1:
            med, frac = after_stats(rr, LL, first, level_raw)
            msg += f" naive first crossing r={first} next10-median {med:.3f} frac-after>level {frac:.2f} |"
        med, frac = after_stats(rr, LL, fc_sm, level)
        msg += f" smoothed-first r={fc_sm} ({frac:.2f}) |"
        med, frac = after_stats(rr, LL, st, level)
        msg += f" settled r={st} next10-median {med:.3f} frac-after>level {frac:.2f}"
        print(msg)
# over many levels: how often is the naive pick a transient dip (median of the next 10 raw losses above level)?
print("levels sweep: fraction of (run, level) picks that are transient dips (median of next 10 raw > level)")
allL = np.concatenate([L[1:] for rs, L in curves.values()])
lv = np.quantile(np.concatenate([L[-30:] for _, L in curves.values()]), [0.5, 0.75, 0.9, 1.0])
lv = np.concatenate([lv, np.linspace(lv[-1], 2.0, 6)[1:]])
rules = [
    ("naive first crossing", 0),
    ("raw stays (w=1)", 1),
    ("settled w=3", 3),
    ("settled w=5", 5),
    ("settled w=7", 7),
    ("settled w=9", 9),
    ("report's rule (w=5)", -5),  # settled w=5 and the matched round's own loss <= level (flatfl report)
]
trained = {n: v for n, v in curves.items() if v[1][-1] < 0.9 * v[1][0]}
print(
    f"per-run level sweep over the runs that trained ({len(trained)} of {len(curves)}): "
    "levels Lmin + k (0.9 L0 - Lmin), k = 0.1..0.9; Lmin = lowest raw loss"
)
for label, w in rules:
    dips, n, rnds, fracs, never, lag = 0, 0, [], [], 0, []
    for _name, (rs, L) in trained.items():
        rr, LL = rs[1:], L[1:]
        lo = LL.min()
        for k in np.linspace(0.1, 0.9, 9):
            level = lo + k * (0.9 * L[0] - lo)
            if w == 0:
                r = next((r for r, v in zip(rr, LL) if v <= level), None)
            elif w < 0:
                i = matched_index(LL, level, -w)
                r = rr[i] if i is not None else None
            else:
                i = settled_index(moving_median(LL, w), level)
                r = rr[i] if i is not None else None
            if r is None:
                never += 1
                continue
            n += 1
            med, frac = after_stats(rr, LL, r, level)
            dips += med > level
            rnds.append(r)
            fracs.append(frac)
    print(
        f"  {label:22s}: transient dips {dips}/{n} (never {never}); mean matched round {np.mean(rnds):.1f}; "
        f"mean fraction of later rounds with raw loss > level {np.mean(fracs):.3f}"
    )
