"""``--samples auto`` against the full analysis data: time to reach a 1% data error vs the full-data time.

The largest real data here: the 42 raw Shakespeare plays in ``../shared/data/shakespeare/plays``
(``--plays``), cut as ``flatfl data shakespeare`` cuts them (speeches per role joined with newlines,
every 80-character window a sample whose target is the next character; the first 90% of each role's
windows are its training windows). The analysis data are ``--samples`` training windows drawn at
random (seeded) from all roles of all plays. The model is flatfl's character LSTM
(``flatfl.models.lstm.CharLSTM``), made small (``--hidden``, one layer) so the full-data side finishes
in minutes on a 2-core CPU, and trained here for ``--train-steps`` Adam steps on other windows.

Both sides run the code path of ``flatfl landscape --hessian --topk 1 --trace --tol 1e-3
--trace-matvecs 30`` (``--tol``, ``--trace-matvecs``):
:func:`flatfl.runs.problem.from_tensors` (which applies ``--samples auto``) then
:func:`flatfl.runs.measure.measure`, each timed as a whole (the subset search included):

* full: every analysis window;
* auto: ``--samples auto --data-tol 0.01``.

Printed: lambda_max and the trace on each side, the data_error auto reports next to each, their
relative difference to the full-data value, and the time ratio. The trace is an estimate with the
same seeded probe vectors on both sides; its probe standard error is printed too (it is part of the
difference, the data error is not meant to cover it).

    OMP_NUM_THREADS=1 python bench/samples_auto.py [--samples 4000] [--hidden 16] [--data-tol 0.01]

Without the plays the script stops with one line (exit code 2).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flatfl.data.shakespeare import SEQ_LEN, encode, parse_play
from flatfl.models.lstm import CharLSTM
from flatfl.runs.landscape import LandscapeSettings
from flatfl.runs.measure import measure
from flatfl.runs.problem import from_tensors

ROOT = Path(__file__).resolve().parent.parent
PLAYS = ROOT.parent / "shared" / "data" / "shakespeare" / "plays"


def role_texts(plays: Path) -> list[torch.Tensor]:
    """Each role's training text (speeches joined with newlines, first 90% of its windows), encoded."""
    texts = []
    for f in sorted(plays.glob("*.txt")):
        for speeches in parse_play(f.read_text(encoding="utf-8", errors="replace")).values():
            codes = encode("\n".join(speeches))
            n_windows = len(codes) - SEQ_LEN
            if n_windows < 2:
                continue
            n_train = max(1, int(0.9 * n_windows))
            texts.append(torch.tensor(codes[: n_train + SEQ_LEN], dtype=torch.uint8))
    return texts


def windows(texts: list[torch.Tensor], idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The windows of global training-window numbers ``idx`` (roles one after the other): (x, y)."""
    counts = torch.tensor([len(t) - SEQ_LEN for t in texts])
    starts = torch.cumsum(counts, 0) - counts
    role = torch.searchsorted(starts, idx, right=True) - 1
    pos = idx - starts[role]
    rows = [texts[r][p : p + SEQ_LEN + 1] for r, p in zip(role.tolist(), pos.tolist())]
    xy = torch.stack(rows).long()
    return xy[:, :SEQ_LEN], xy[:, SEQ_LEN]


def train(x: torch.Tensor, y: torch.Tensor, hidden: int, steps: int) -> CharLSTM:
    """A one-layer CharLSTM trained with Adam (lr 0.01, batches of 128), seeded."""
    torch.manual_seed(0)
    model = CharLSTM(hidden=hidden, layers=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        b = torch.randint(len(y), (128,), generator=g)
        loss = F.cross_entropy(model(x[b]), y[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def run_side(model: CharLSTM, x: torch.Tensor, y: torch.Tensor, settings: LandscapeSettings) -> tuple[float, dict]:
    """Seconds and landscape record of one side: ``from_tensors`` (+ ``--samples auto``) then ``measure``."""
    t = time.perf_counter()
    source = {"data": {"selection": "bench", "samples": int(len(y)), "of": int(len(y))}}
    log = lambda s: print(f"  {s}", flush=True)  # noqa: E731
    problem = from_tensors(model, x, y, settings, source, "bench", log)
    record = measure(problem, settings, log=log).record
    return time.perf_counter() - t, record


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plays", type=Path, default=PLAYS, help=f"raw plays (default: {PLAYS})")
    ap.add_argument("--samples", type=int, default=4000, help="analysis windows (default: 4000)")
    ap.add_argument("--hidden", type=int, default=16, help="LSTM hidden size, one layer (default: 16)")
    ap.add_argument("--train-steps", type=int, default=300, help="Adam steps before the analysis (default: 300)")
    ap.add_argument("--data-tol", type=float, default=0.01, help="--data-tol of the auto side (default: 0.01)")
    ap.add_argument("--trace-matvecs", type=int, default=30, help="--trace-matvecs of both sides (default: 30)")
    ap.add_argument("--tol", type=float, default=1e-3, help="Lanczos --tol of both sides (default: 1e-3)")
    args = ap.parse_args()
    if not args.plays.is_dir() or not any(args.plays.glob("*.txt")):
        print(f"samples_auto: {args.plays}: no raw Shakespeare plays (*.txt) there; pass --plays DIR", file=sys.stderr)
        sys.exit(2)
    t = time.perf_counter()
    texts = role_texts(args.plays)
    total = sum(len(s) - SEQ_LEN for s in texts)
    order = torch.randperm(total, generator=torch.Generator().manual_seed(0))
    x, y = windows(texts, order[: args.samples])
    tx, ty = windows(texts, order[args.samples : args.samples + 20000])
    model = train(tx, ty, args.hidden, args.train_steps)
    with torch.no_grad():
        out = model(x)
        loss, acc = float(F.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean())
    params = sum(p.numel() for p in model.parameters())
    print(
        f"data: {len(y):,} of {total:,} training windows ({len(texts):,} roles, "
        f"{len(list(args.plays.glob('*.txt')))} plays); CharLSTM hidden {args.hidden}, 1 layer, {params:,} params, "
        f"{args.train_steps} Adam steps: loss {loss:.3f}, accuracy {acc:.3f} ({time.perf_counter() - t:.0f} s); "
        f"threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    base = LandscapeSettings(hessian=True, topk=1, trace=True, trace_matvecs=args.trace_matvecs, tol=args.tol)
    sides = {}
    for name, st in (("full", base), ("auto", replace(base, samples_auto=True, data_tol=args.data_tol))):
        sides[name] = run_side(model, x, y, st)
        sec, r = sides[name]
        used = r["data"]["samples"]
        levels = [lv["samples"] for lv in r["data"]["auto"]["levels"]] if name == "auto" else [used]
        print(
            f"{name:4s}: {used:,} samples (levels {levels}), HVP {r['hvp_method']}: "
            f"lambda_max {r['hessian']['eigenvalues'][0]:.6g} ({r['hessian']['num_hvps']} HVPs), "
            f"trace {r['trace']['estimate']:.6g} +- {r['trace']['stderr']:.2g} (probes), {sec:.1f} s",
            flush=True,
        )
    (tf, full), (ta, auto) = sides["full"], sides["auto"]
    err = auto["data"]["auto"]["data_errors"]
    for q, key in (("lambda_max", ("hessian", "eigenvalues")), ("trace", ("trace", "estimate"))):
        vf, va = full[key[0]][key[1]], auto[key[0]][key[1]]
        vf, va = (vf[0], va[0]) if isinstance(vf, list) else (vf, va)
        errors = abs(va - vf) / max(err[q], 1e-300)
        print(
            f"{q}: full {vf:.6g}, auto {va:.6g} +- {err[q]:.2g} (data_error, {100 * err[q] / abs(va):.2f}%), "
            f"relative difference {100 * rel(va, vf):.2f}% ({errors:.1f} data errors)"
        )
    print(
        f"time to reach {100 * args.data_tol:g}%: auto {ta:.1f} s vs full data {tf:.1f} s: "
        f"{ta / tf:.2f} of the full-data time ({tf / ta:.2f}x faster); load {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
