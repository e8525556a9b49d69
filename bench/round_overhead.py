"""Trainer overhead: FedMut rounds in ``flatfl.trainer`` vs a bare hand-written loop.

Both sides train the same sampled clients (``sample_clients(cfg, t)``) on the same data
with the same number of SGD steps; runs alternate (trainer, bare, trainer, bare, ...) so
machine noise hits both, and medians are reported. Two comparisons:

* **round compute** -- the trainer's ``round_time`` (from ``metrics.jsonl``: client sampling,
  FedMut mutant dispatch, local SGD through the algorithm hooks, aggregation, finiteness
  check) vs the bare loop's rounds (load the global weights, SGD over the client's tensors,
  plain mean). This is the cost of flatfl's abstractions. Target: ratio <= 1.05.
* **whole run** -- the full ``train()`` call (setup, per-round test evaluation, fsynced
  safetensors checkpoints, state and metrics) vs the bare loop with setup and a test
  evaluation per round (as the FedMut reference loop does), and vs bare training alone.

    python bench/round_overhead.py [--rounds 40] [--repeats 7] [--local-epochs 5]
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
from flatfl.checkpoint import read_metrics
from flatfl.config import DataConfig, LocalConfig, RunConfig
from flatfl.data import load_dataset
from flatfl.models import build_model
from flatfl.trainer import make_partition, sample_clients, train


def bare_round(model, glob, xs, ys, cfg: RunConfig, t: int) -> dict[str, torch.Tensor]:
    """One hand-written round: each sampled client trains from ``glob`` by plain SGD; plain mean."""
    lc = cfg.local
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
    return {k: torch.stack([r[k] for r in returned]).mean(0) for k in glob}


def bare_rounds(cfg: RunConfig, evaluate: bool) -> tuple[float, float]:
    """(whole time, time of the rounds' sampling + training + averaging)."""
    t0 = time.perf_counter()
    data = load_dataset(cfg.data)
    parts = make_partition(cfg, data)
    xs = [data.train.x[torch.as_tensor(p)] for p in parts]
    ys = [data.train.y[torch.as_tensor(p)] for p in parts]
    model = build_model(cfg.model, **cfg.model_kwargs)
    glob = {k: v.clone() for k, v in model.state_dict().items()}
    in_rounds = 0.0
    for t in range(1, cfg.rounds + 1):
        r0 = time.perf_counter()
        glob = bare_round(model, glob, xs, ys, cfg, t)
        in_rounds += time.perf_counter() - r0
        if evaluate:  # the reference loop tests the global model every round
            model.load_state_dict(glob)
            model.eval()
            with torch.no_grad():
                out = model(data.test.x)
                F.cross_entropy(out, data.test.y).item()
                (out.argmax(1) == data.test.y).float().mean().item()
            model.train()
    return time.perf_counter() - t0, in_rounds


def trainer_rounds(cfg: RunConfig) -> tuple[float, float]:
    """(whole ``train()`` time, sum of the rounds' ``round_time``)."""
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            train(cfg, Path(d) / "run", device="cpu", progress=False)
        whole = time.perf_counter() - t0
        return whole, sum(r["round_time"] for r in read_metrics(Path(d) / "run") if r["round"] > 0)


def interleaved_rounds(cfg: RunConfig) -> tuple[float, float]:
    """(trainer, bare) seconds of round compute, alternating one round of each in one process.

    Alternating per round (and which goes first) cancels the machine's speed drift, which on
    a shared 2-core VM is larger than the overhead being measured. The trainer side is
    ``algorithm.run_round`` (dispatch, local SGD through ``Simulation.train_client``,
    aggregation) plus client sampling and the finiteness check, as in ``train()``.
    """
    from flatfl import seeding
    from flatfl.statedict import first_nonfinite
    from flatfl.trainer import Simulation

    data = load_dataset(cfg.data)
    parts = make_partition(cfg, data)
    sim = Simulation(cfg, torch.device("cpu"), data, parts)
    g_tr = sim.initial_state()
    xs = [data.train.x[torch.as_tensor(p)] for p in parts]
    ys = [data.train.y[torch.as_tensor(p)] for p in parts]
    model = build_model(cfg.model, **cfg.model_kwargs)
    g_b = {k: v.clone() for k, v in model.state_dict().items()}
    t_tr = t_b = 0.0

    def trainer_round(t: int) -> None:
        nonlocal g_tr
        clients = sample_clients(cfg, t)
        out = sim.algorithm.run_round(
            t, g_tr, clients.tolist(), seeding.derive_rng(cfg.seed, seeding.ALGORITHM, t), sim
        )
        first_nonfinite(out.new_global)
        g_tr = out.new_global

    def bare_side(t: int) -> None:
        nonlocal g_b
        g_b = bare_round(model, g_b, xs, ys, cfg, t)

    for t in range(1, cfg.rounds + 1):
        order = [(trainer_round, "tr"), (bare_side, "b")] if t % 2 else [(bare_side, "b"), (trainer_round, "tr")]
        for fn, side in order:
            t0 = time.perf_counter()
            fn(t)
            dt = time.perf_counter() - t0
            if side == "tr":
                t_tr += dt
            else:
                t_b += dt
    return t_tr, t_b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=7)
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
    warm = RunConfig(**{**cfg.__dict__, "rounds": 2})
    trainer_rounds(warm)  # warm-up (lazy kernels, allocator)
    bare_rounds(warm, True)
    tr, br, be = [], [], []
    for _ in range(args.repeats):
        tr.append(trainer_rounds(cfg))
        br.append(bare_rounds(cfg, evaluate=False))
        be.append(bare_rounds(cfg, evaluate=True))
    med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
    ms = lambda v: f"{1000 * v / args.rounds:7.1f} ms/round"  # noqa: E731
    print(
        f"FedMut on digits, 20 clients, m=5, E={args.local_epochs}, {args.rounds} rounds, "
        f"{torch.get_num_threads()} threads, median of {args.repeats} alternating runs"
    )
    il = [interleaved_rounds(cfg) for _ in range(3)]
    il_tr, il_b = sum(x[0] for x in il), sum(x[1] for x in il)
    print("round compute, one trainer round and one bare round alternating in one process (3 x 40 rounds):")
    print(f"  trainer  {ms(il_tr / 3)}   bare {ms(il_b / 3)}   ratio {il_tr / il_b:.3f}  (target <= 1.05)")
    print("round compute (sampling, dispatch, local SGD, aggregation), separate runs:")
    print(f"  trainer  {ms(med(tr, 1))}   bare {ms(med(br, 1))}   ratio {med(tr, 1) / med(br, 1):.3f}")
    print("whole run (setup, rounds, test evaluation each round, checkpoints):")
    print(f"  trainer  {ms(med(tr, 0))}   bare+eval {ms(med(be, 0))}   ratio {med(tr, 0) / med(be, 0):.3f}")
    print(f"  trainer  {ms(med(tr, 0))}   bare      {ms(med(br, 0))}   ratio {med(tr, 0) / med(br, 0):.3f}")


if __name__ == "__main__":
    main()
