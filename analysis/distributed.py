"""Curvature and surfaces across ``torchrun`` ranks: split the data (HVPs) or the grid points.

* Hessian-vector products, the loss and its gradient split the *data*: rank r holds the r-th
  contiguous shard (n_r samples) and computes its mean; one ``all_reduce`` of n_r * (local
  mean) / n gives the mean over all n samples on every rank. Lanczos, Hutchinson/Hutch++ and
  SLQ then run unchanged on every rank with the same seeded generators and the same reduced
  products, so every rank holds the same eigenvalues (equal to one process's within float
  summation order).
* Surface grids split the *points*: rank r evaluates the points k with k mod W = r on the
  whole selection; one ``all_reduce`` (the other ranks contribute exact zeros) assembles the
  grid. Each point is computed as one process computes it, up to float rounding where a rank's
  vmap-or-loop choice (``analysis.surfaces.evaluate_grid`` times both) differs from one process's.

Everything else (sharpness measures, the federated view, markers) runs whole on every rank;
``flatfl report`` measures each checkpoint this way, then leaves the spread and the writing to
rank 0. Rank 0 writes the files. Backend: NCCL on CUDA devices, gloo on CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from flatfl.analysis.operators import ScipyExport


def world() -> tuple[int, int] | None:
    """(rank, world size) inside an initialised process group of more than one rank, else None."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return None


def is_main() -> bool:
    w = world()
    return w is None or w[0] == 0


def init_from_env(device: torch.device) -> bool:
    """Join torchrun's process group if launched by it with >1 process; True if this call made it."""
    if world() is not None or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # generous: the other ranks wait at the final barrier while rank 0 alone writes (flatfl report
    # also computes the spread there), which may take longer than the default 30 minutes
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=2))
    return True


@contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Inside: torchrun's process group joined (if launched by it); left and destroyed after, if
    this call made it."""
    owns = init_from_env(device)
    ok = False
    try:
        yield
        ok = True
    finally:
        if owns and dist.is_initialized():
            if ok:  # every rank done (rank 0 writing last): nobody tears down a group a peer still uses;
                dist.barrier()  # without it a rank leaving early was seen to abort in teardown (1 in 12 under load)
            dist.destroy_process_group()


def shard(n: int, rank: int, size: int) -> slice:
    """The rank's contiguous share of n samples (sizes differ by at most one)."""
    bounds = np.linspace(0, n, size + 1).round().astype(int)
    return slice(int(bounds[rank]), int(bounds[rank + 1]))


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (moved to the current CUDA device and back under NCCL)."""
    if world() is None:
        return t
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        c = t.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(c, op=dist.ReduceOp.SUM)
        return c.to(t.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class ShardedOperator(ScipyExport):
    """The Hessian of the mean loss over all ranks' shards, from each rank's local operator.

    ``matvec(v) = sum_r n_r H_r v / n`` with ``H_r`` the local operator's mean-loss Hessian and n_r, n the
    loss denominators (``ModelLoss.norm``: the numbers of examples for a plain mean).
    Implements ``size/dtype/device/matvec/matmat`` and counts products like the local operator.
    """

    def __init__(self, local, n_local: float, n_total: float) -> None:
        self.local = local
        self.size, self.dtype, self.device = local.size, local.dtype, local.device
        self.weight = n_local / n_total
        self.num_matvecs = 0

    @property
    def method(self) -> str:
        return self.local.method

    @property
    def graph_bytes_estimate(self) -> int:
        return self.local.graph_bytes_estimate

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.num_matvecs += 1
        return all_reduce_sum(self.local.matvec(v) * self.weight)

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """sum_r n_r H_r V / n: each rank's block product, one ``all_reduce`` per block."""
        from flatfl.analysis.operators import matmat

        self.num_matvecs += V.shape[1]
        return all_reduce_sum(matmat(self.local, V) * self.weight)


def sharded_loss_and_gradient(obj, n_total: float) -> tuple[float, torch.Tensor]:
    """(mean loss, gradient) over all ranks from each rank's ``ModelLoss`` on its shard; ``n_total``: the
    whole data's loss denominator (``ModelLoss.norm``, the number of examples for a plain mean)."""
    loss, g = obj.loss_and_gradient()
    w = obj.norm / n_total
    packed = all_reduce_sum(torch.cat([g * w, torch.tensor([loss * w], dtype=g.dtype, device=g.device)]))
    return float(packed[-1]), packed[:-1]


def assemble(values: np.ndarray, mine: np.ndarray) -> np.ndarray:
    """Every rank's points of a grid: ``values`` holds this rank's points where ``mine`` is True."""
    t = torch.from_numpy(np.where(mine, values, 0.0).astype(np.float64))
    return all_reduce_sum(t).numpy()


def broadcast_array(a: np.ndarray | None) -> np.ndarray | None:
    """Rank 0's array (or None) on every rank."""
    if world() is None:
        return a
    box = [a]
    dist.broadcast_object_list(box, src=0)
    return box[0]
