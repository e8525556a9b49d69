"""Checkpoint storage: bytes written and seconds spent in I/O per round, before and after the storage options.

For each model (the CNN, 62k parameters, and ResNet-18, 11.2M) with 100 clients, 10 per round,
two runs of the same rounds one after the other in one process. The CNN runs SCAFFOLD, whose
per-client control variates make the state grow with the clients (4.5 GB for 100 ResNet-18
clients: ``--runs resnet18:scaffold`` measures that case, which held 8.8 GB of memory by round 1
of "before" and takes many minutes); ResNet-18 runs FedMut by default, whose state (the previous global model) does not:

* **before**: every round saved, the whole state (every client's c_k) rewritten into
  ``state.safetensors`` each round -- flatfl 0.1's layout (``StorageConfig(save_every=1,
  incremental_state=False)``);
* **after**: ``--save-every 10`` with per-client state written incrementally (only the clients
  that took part since the last save, ``flatfl.client_state``).

Measured per round (rounds 1..R, round 0's start-up writes left out): bytes handed to the
filesystem (every atomic write and metrics line), and I/O seconds = the CPU snapshots taken on the
training thread + the write jobs (serialise, write, fsync, rename) on the writer thread, which
overlap the next round's training -- an upper bound on what saving costs a round. Round time is
the whole ``train()`` call divided by R. Local work is tiny on purpose (one local step of 5
random CIFAR-shaped images per client, a 50-image test set): real runs train hundreds of times more per
round, so the I/O share measured here is a pessimistic bound. The data are random images in the
CIFAR-10 layout (no download). R must be a multiple of 10 for --save-every 10 to amortise.

    OMP_NUM_THREADS=1 python bench/storage.py [--runs cnn:scaffold,resnet18:fedmut] [--rounds 10] [--clients 100]
    OMP_NUM_THREADS=1 python bench/storage.py --precision   # the rounding error of --clients-dtype bfloat16
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import pickle
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flatfl import checkpoint as ckpt
from flatfl import saver as saver_mod
from flatfl.algorithms import get_algorithm
from flatfl.config import DataConfig, LocalConfig, RunConfig
from flatfl.data import dataset_info
from flatfl.models import model_kwargs_for
from flatfl.storage import StorageConfig
from flatfl.trainer import train


def write_fake_cifar10(root: Path, train_n: int, test_n: int) -> None:
    """Random uint8 images and labels in the official python-version layout (5 batches + test)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    per = train_n // 5
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = test_n if name == "test_batch" else per
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c"] * 10}, protocol=2))


@dataclass
class Measured:
    bytes: int = 0
    io_s: float = 0.0
    wall_s: float = 0.0


@contextlib.contextmanager
def metering(m: Measured):
    """Count bytes of every atomic write and metrics line, and time snapshots + write jobs, for rounds >= 1."""
    real_write, real_append, real_job = ckpt.atomic_write_bytes, ckpt.append_metrics, saver_mod.RoundSaver.job
    counting = {"on": False}

    def write(path, data):
        if counting["on"]:
            m.bytes += len(data)
        real_write(path, data)

    def append(run_dir, record):
        if counting["on"]:
            m.bytes += len((json.dumps(record) + "\n").encode())
        real_append(run_dir, record)

    def job(self, t, *a, **k):
        counting["on"] = t >= 1
        t0 = time.perf_counter()
        fn = real_job(self, t, *a, **k)  # the snapshots happen here, on the training thread
        snap = time.perf_counter() - t0

        def timed():
            t1 = time.perf_counter()
            counting["on"] = t >= 1
            fn()
            if t >= 1:
                m.io_s += time.perf_counter() - t1

        if t >= 1:
            m.io_s += snap
        return timed

    ckpt.atomic_write_bytes, ckpt.append_metrics, saver_mod.RoundSaver.job = write, append, job
    try:
        yield m
    finally:
        ckpt.atomic_write_bytes, ckpt.append_metrics, saver_mod.RoundSaver.job = real_write, real_append, real_job


def run_once(cfg: RunConfig, storage: StorageConfig, out: Path) -> Measured:
    m = Measured()
    with metering(m), contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        train(cfg, out, device="cpu", progress=False, log=lambda s: None, storage=storage)
        m.wall_s = time.perf_counter() - t0
    return m


def config(model: str, algo: str, clients: int, rounds: int, root: Path) -> RunConfig:
    data = DataConfig(dataset="cifar10", data_root=str(root), partition="iid", num_clients=clients)
    return RunConfig(
        algo=algo,
        algo_config=get_algorithm(algo).config_cls(),
        model=model,
        model_kwargs=model_kwargs_for(model, dataset_info(data)),
        data=data,
        local=LocalConfig(batch_size=5, epochs=1),
        rounds=rounds,
        frac=0.1,
        eval_batch_size=50,
    )


def precision(root: Path) -> None:
    """--clients-dtype bfloat16 vs float32 on the digits FedMut demo setting (20 clients, 5 per round,
    10 rounds, --save-clients): the rounding error of every stored client model and its test loss."""
    import torch

    from flatfl.algorithms import FedMutConfig
    from flatfl.local import evaluate
    from flatfl.runs.run import Run

    cfg = RunConfig(algo="fedmut", algo_config=FedMutConfig(), model="smallcnn",
                    model_kwargs=model_kwargs_for("smallcnn", dataset_info(DataConfig())), rounds=10,
                    save_clients=1)  # fmt: skip
    runs = {}
    for dtype in ("float32", "bfloat16"):
        runs[dtype] = root / f"digits-{dtype}"
        with contextlib.redirect_stdout(io.StringIO()):
            train(cfg, runs[dtype], device="cpu", progress=False, log=lambda s: None,
                  storage=StorageConfig(clients_dtype=dtype))  # fmt: skip
    run = Run.open(runs["float32"])
    test = run.dataset().test
    net = run.build()
    rel_max = rel_l2 = dloss = rel_update = rel_model_update = 0.0
    size = {d: sum(p.stat().st_size for p in runs[d].glob("clients_*")) for d in runs}
    for r in range(1, cfg.rounds + 1):
        a = ckpt.load_clients(ckpt.clients_path(runs["float32"], r))
        b = ckpt.load_clients(ckpt.clients_path(runs["bfloat16"], r))
        for sa, ra, sb, rb in zip(a[0], a[1], b[0], b[1]):  # the update a client made: returned - sent
            keys = [k for k, v in ra.items() if v.is_floating_point() and v.numel()]
            for k in keys:
                ua, ub = ra[k] - sa[k], rb[k] - sb[k]
                rel_update = max(rel_update, float((ub - ua).norm() / ua.norm().clamp_min(1e-30)))
            ua = torch.cat([(ra[k] - sa[k]).flatten() for k in keys])
            ub = torch.cat([(rb[k] - sb[k]).flatten() for k in keys])
            rel_model_update = max(rel_model_update, float((ub - ua).norm() / ua.norm().clamp_min(1e-30)))
        for ma, mb in zip(a[0] + a[1], b[0] + b[1]):
            for k, va in ma.items():
                if va.is_floating_point() and va.numel():
                    nz = va != 0
                    rel_max = max(rel_max, float(((mb[k] - va).abs()[nz] / va.abs()[nz]).max()))
                    rel_l2 = max(rel_l2, float((mb[k] - va).norm() / va.norm().clamp_min(1e-30)))
            losses = []
            for m in (ma, mb):
                net.load_state_dict(m)
                losses.append(evaluate(net, test.x, test.y, 500)[0])
            dloss = max(dloss, abs(losses[1] - losses[0]) / losses[0])
    print(
        f"clients files: float32 {size['float32'] / 1e6:.2f} MB, bfloat16 {size['bfloat16'] / 1e6:.2f} MB "
        f"({size['float32'] / size['bfloat16']:.2f}x smaller); over {cfg.rounds} rounds x 5 clients x sent+returned:"
    )
    print(f"  max relative error of a weight        {rel_max:.3e}  (bound 2^-8 = {2**-8:.3e})")
    print(f"  max relative L2 error of a tensor     {rel_l2:.3e}")
    print(f"  max relative change of a test loss    {dloss:.3e}")
    print(f"  max relative L2 error of a client's update returned - sent, whole model  {rel_model_update:.3e}")
    print(f"  max relative L2 error of a client's update returned - sent, per tensor   {rel_update:.3e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--runs",
        default="cnn:scaffold,resnet18:fedmut",
        help="comma-separated MODEL:ALGO pairs (default: cnn:scaffold,resnet18:fedmut)",
    )
    ap.add_argument("--rounds", type=int, default=10, help="rounds per run, a multiple of 10 (default: 10)")
    ap.add_argument("--clients", type=int, default=100, help="clients, 10%% sampled per round (default: 100)")
    ap.add_argument("--dir", type=Path, help="folder for the runs (default: a temporary folder, removed after)")
    ap.add_argument(
        "--precision", action="store_true", help="instead: the rounding error of --clients-dtype bfloat16 (digits)"
    )
    args = ap.parse_args()
    if args.precision:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            precision(Path(tmp))
        return
    before = StorageConfig(save_every=1, incremental_state=False)
    after = StorageConfig(save_every=10, incremental_state=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        write_fake_cifar10(root / "data", train_n=5 * args.clients, test_n=50)
        rows = []
        for pair in args.runs.split(","):
            model, algo = pair.split(":")
            cfg = config(model, algo, args.clients, args.rounds, root / "data")
            b = run_once(cfg, before, root / f"{model}-before")
            a = run_once(cfg, after, root / f"{model}-after")
            rows.append((f"{model} {algo}", b, a))
            print(f"{pair}: done", flush=True)
    r = args.rounds
    print(
        f"\n{args.clients} clients, {args.clients // 10} per round, {r} rounds; per round "
        "(before: every round, whole state; after: --save-every 10, incremental state):"
    )
    print(f"{'run':16} {'':7} {'MB written':>11} {'I/O s':>8} {'round s':>8} {'I/O share':>9}")
    for name, b, a in rows:
        for when, m in (("before", b), ("after", a)):
            print(
                f"{name:16} {when:7} {m.bytes / r / 1e6:11.2f} {m.io_s / r:8.3f} {m.wall_s / r:8.3f} "
                f"{100 * m.io_s / m.wall_s:8.1f}%"
            )
        print(
            f"{name:16} {'ratio':7} {b.bytes / max(a.bytes, 1):10.1f}x {b.io_s / max(a.io_s, 1e-9):7.1f}x "
            f"{b.wall_s / a.wall_s:7.2f}x"
        )


if __name__ == "__main__":
    main()
