"""Parallel clients on one device: sequential local SGD vs ``flatfl.parallel`` (vmap over clients).

The FedMut paper's CIFAR CNN (LeNet, 62,006 parameters) on CIFAR-size inputs (3x32x32, random
pixels and labels -- throughput does not depend on the values): k clients of ``--samples``
images each (500 = CIFAR-10 over 100 clients), batch 50, ``--epochs`` local epochs, SGD with
momentum 0.9, every client starting from its own model (as FedMut's mutants). Both sides run
flatfl's own code with the same per-client generators: ``flatfl.local.local_sgd`` one client
after another, and ``flatfl.parallel.train_parallel`` for all k at once. Repeats alternate
(sequential, parallel, ...) so machine noise hits both; medians are reported, with the
throughput in client-epochs per second, the ratio, and the largest weight difference between
the two sides (float summation order only).

    python bench/parallel_clients.py [--clients 10] [--samples 500] [--device auto] [--repeats 5]

Target (issue #7): >= 5x for 10 clients on a GPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch

from flatfl import seeding
from flatfl.algorithms.base import ClientJob
from flatfl.config import LocalConfig
from flatfl.local import local_sgd
from flatfl.models import build_model
from flatfl.parallel import train_parallel
from flatfl.statedict import clone


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--samples", type=int, default=500, help="images per client")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    torch.manual_seed(0)
    k = args.clients
    xs = [torch.randn(args.samples, 3, 32, 32, device=dev) for _ in range(k)]
    ys = [torch.randint(0, 10, (args.samples,), device=dev) for _ in range(k)]
    model = build_model("cnn", in_channels=3, num_classes=10).to(dev)
    starts = []
    for _ in range(k):
        with torch.no_grad():
            starts.append({n: v + 0.01 * torch.randn_like(v) for n, v in clone(model.state_dict()).items()})
    local = LocalConfig(lr=0.01, momentum=0.9, batch_size=args.batch_size, epochs=args.epochs, weight_decay=0.0)
    sim = SimpleNamespace(
        cfg=SimpleNamespace(local=local, seed=0), model=model, client_x=xs, client_y=ys, augment=None,
        on_client_done=None,
    )  # fmt: skip
    jobs = [ClientJob(i, i, starts[i]) for i in range(k)]

    def sequential() -> list[dict[str, torch.Tensor]]:
        out = []
        for i in range(k):
            model.load_state_dict(starts[i])
            gen = torch.Generator().manual_seed(seeding.derive_seed(0, seeding.CLIENT, 1, i))
            local_sgd(model, xs[i], ys[i], local, gen)
            out.append(clone(model.state_dict()))
        return out

    def parallel() -> list[dict[str, torch.Tensor]]:
        return [u.state for u in train_parallel(sim, 1, jobs)]

    sequential(), parallel()  # warm-up (kernels, allocator)
    times: dict[str, list[float]] = {"sequential": [], "parallel": []}
    results = {}
    for _ in range(args.repeats):
        for name, fn in (("sequential", sequential), ("parallel", parallel)):
            sync(dev)
            t0 = time.perf_counter()
            results[name] = fn()
            sync(dev)
            times[name].append(time.perf_counter() - t0)
    diff = max(float((a[n] - b[n]).abs().max()) for a, b in zip(results["sequential"], results["parallel"]) for n in a)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; {k} clients x {args.samples} images 3x32x32, batch {args.batch_size}, "
          f"{args.epochs} epoch(s), LeNet 62,006 params, median of {args.repeats}")  # fmt: skip
    ce = k * args.epochs
    for n, ts in times.items():
        med = statistics.median(ts)
        print(f"  {n:>10}: {med:.3f} s  ({ce / med:.1f} client-epochs/s)")
    ratio = statistics.median(times["sequential"]) / statistics.median(times["parallel"])
    print(f"  parallel / sequential throughput: {ratio:.2f}x   (target on a GPU: >= 5x for 10 clients)")
    print(f"  largest weight difference: {diff:.2e}")


if __name__ == "__main__":
    main()
