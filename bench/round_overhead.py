"""Trainer overhead: a FedMut round in ``flatfl.trainer`` vs bare local training.

Both sides train the same sampled clients (``sample_clients(cfg, t)``) on the same data
with the same number of SGD steps. The trainer side is the full ``train()`` call: mutant
dispatch, local SGD, aggregation, test evaluation, per-round safetensors checkpoint,
state and metrics (fsynced). The bare side is the loop a researcher would write by hand:
load the global weights, run SGD over the client's tensors, average -- timed once without
and once with a test-set evaluation of the global model per round (the trainer always
evaluates; the FedMut reference loop does too). Runs alternate
(trainer, bare, trainer, bare, ...) so machine noise hits both; the median of each is
reported. Target: ratio <= 1.05.

    python bench/round_overhead.py [--rounds 40] [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from flatfl.algorithms import FedMutConfig
from flatfl.config import DataConfig, LocalConfig, RunConfig
from flatfl.data import load_dataset
from flatfl.models import build_model
from flatfl.trainer import make_partition, sample_clients, train


def bare_rounds(cfg: RunConfig, rounds: int, evaluate: bool) -> float:
    t0 = time.perf_counter()
    data = load_dataset(cfg.data)
    parts = make_partition(cfg, data)
    xs = [data.train.x[torch.as_tensor(p)] for p in parts]
    ys = [data.train.y[torch.as_tensor(p)] for p in parts]
    model = build_model(cfg.model, **cfg.model_kwargs)
    glob = {k: v.clone() for k, v in model.state_dict().items()}
    lc = cfg.local
    for t in range(1, rounds + 1):
        returned = []
        for c in sample_clients(cfg, t).tolist():
            model.load_state_dict(glob)
            opt = torch.optim.SGD(model.parameters(), lr=lc.lr, momentum=lc.momentum)
            g = torch.Generator().manual_seed(t * 1000 + c)
            n = len(ys[c])
            for _ in range(lc.epochs):
                perm = torch.randperm(n, generator=g)
                for s in range(0, n, lc.batch_size):
                    idx = perm[s : s + lc.batch_size]
                    loss = F.cross_entropy(model(xs[c][idx]), ys[c][idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            returned.append({k: v.clone() for k, v in model.state_dict().items()})
        glob = {k: torch.stack([r[k] for r in returned]).mean(0) for k in glob}
        if evaluate:  # the reference loop tests the global model every round
            model.load_state_dict(glob)
            model.eval()
            with torch.no_grad():
                out = model(data.test.x)
                F.cross_entropy(out, data.test.y).item(), (out.argmax(1) == data.test.y).float().mean().item()
            model.train()
    return time.perf_counter() - t0


def trainer_rounds(cfg: RunConfig, rounds: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            train(cfg, Path(d) / "run", device="cpu", progress=False)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--local-epochs", type=int, default=5)
    args = ap.parse_args()
    cfg = RunConfig(
        algo="fedmut",
        algo_config=FedMutConfig(),
        model="smallcnn",
        model_kwargs={"in_channels": 1, "image_size": 8, "num_classes": 10},
        data=DataConfig(num_clients=20, dirichlet_alpha=0.1),
        local=LocalConfig(epochs=args.local_epochs),
        rounds=args.rounds,
        frac=0.25,
        seed=0,
    )
    torch.manual_seed(0)
    trainer_rounds(RunConfig(**{**cfg.__dict__, "rounds": 2}), 2)  # warm-up (lazy kernels)
    bare_rounds(cfg, 2, True)
    tt, tb, te = [], [], []
    for _ in range(args.repeats):
        tt.append(trainer_rounds(cfg, args.rounds))
        tb.append(bare_rounds(cfg, args.rounds, evaluate=False))
        te.append(bare_rounds(cfg, args.rounds, evaluate=True))
    mt, mb, me = statistics.median(tt), statistics.median(tb), statistics.median(te)
    print(
        f"FedMut on digits, 20 clients, m=5, E={args.local_epochs}, {args.rounds} rounds, "
        f"{torch.get_num_threads()} threads, median of {args.repeats} alternating runs"
    )
    print(f"trainer  {1000 * mt / args.rounds:8.1f} ms/round  (runs: {', '.join(f'{x:.2f}s' for x in tt)})")
    print(f"bare     {1000 * mb / args.rounds:8.1f} ms/round  (runs: {', '.join(f'{x:.2f}s' for x in tb)})")
    print(f"bare+eval{1000 * me / args.rounds:8.1f} ms/round  (runs: {', '.join(f'{x:.2f}s' for x in te)})")
    print(f"ratio trainer/bare      = {mt / mb:.3f}  (local training only; target <= 1.05)")
    print(
        f"ratio trainer/bare+eval = {mt / me:.3f}  (bare loop also tests the global model each round, "
        "as the FedMut reference loop does)"
    )


if __name__ == "__main__":
    main()
