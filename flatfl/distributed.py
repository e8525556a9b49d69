"""Several processes under ``torchrun``: one round's sampled clients split across ranks.

Every rank holds the data, the model and the algorithm, and derives the same client sample,
partitions, FedMut mutants and local shuffles from (seed, round) (``flatfl.seeding``), so no
model has to be sent to start a round. Rank r trains the round's slots r, r + W, r + 2W, ...;
one collective per dtype then gives every rank every trained client model *in slot order*
(``all_gather`` of a fixed-size buffer of each rank's rows -- a copy, no arithmetic), and every
rank runs the algorithm's ``aggregate``/``after_round`` on the same list as a single process
would. On CPU the result is therefore bit-for-bit the single-process run for every algorithm;
on GPU it matches within float tolerance (rank 0's new global model is broadcast each round so
the ranks cannot drift apart through non-deterministic kernels). Rank 0 alone writes files.

Gathering all client models (rather than one ``all_reduce`` of their weighted sum) costs m
model-sized rows per round instead of one, and is what every baseline needs anyway: SCAFFOLD,
CluSamp, FedDF, FedAUX and FedGen all read the individual client models on the server, and a
sum in another order would not be bitwise the single-process mean.

Backend: NCCL when the training device is CUDA, gloo on CPU. The environment variables set by
``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``) are all the
configuration there is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from flatfl.statedict import StateDict


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    backend: str
    owns_group: bool = True  # False when the caller set up the process group (and tears it down)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def my_slots(self, n: int) -> list[int]:
        """The indices (in 0..n-1) of the jobs this rank trains."""
        return list(range(self.rank, n, self.world_size))


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init(device: torch.device) -> DistContext | None:
    """Join the process group torchrun set up (None when not under torchrun with >1 process).

    An already initialised default group (a script that calls ``flatfl.trainer.train`` several
    times) is used as it is and left for its owner to destroy.
    """
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() == 1:
            return None
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank(), dist.get_backend(), False)
    if not launched_by_torchrun():
        return None
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank(), backend)


def shutdown(ctx: DistContext | None, ok: bool = True) -> None:
    """Leave the process group this module made; after a barrier when the run ended normally
    (rank 0 may still be flushing checkpoints; tearing down while a peer still uses the group
    was seen to abort a rank), without one after an error (the peers may never arrive)."""
    if ctx is not None and ctx.owns_group and dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()


def broadcast_object(ctx: DistContext | None, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (small Python objects: partitions, round numbers, JSON)."""
    if ctx is None:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_state(ctx: DistContext | None, state: StateDict) -> StateDict:
    """Rank 0's tensors in place on every rank (same keys, shapes and dtypes on every rank)."""
    if ctx is None:
        return state
    for k in sorted(state):
        dist.broadcast(state[k], src=0)
    return state


def gather_states(ctx: DistContext, n: int, mine: dict[int, StateDict], template: StateDict) -> list[StateDict]:
    """All n job states in job order on every rank; ``mine`` maps this rank's job indices to states.

    One ``all_gather`` per dtype of a (ceil(n / W), numel) buffer holding this rank's rows.
    """
    W = ctx.world_size
    rows = -(-n // W)
    keys = list(template)
    by_dtype: dict[torch.dtype, list[str]] = {}
    for k in keys:
        by_dtype.setdefault(template[k].dtype, []).append(k)
    out: list[StateDict] = [{} for _ in range(n)]
    for dtype, ks in by_dtype.items():
        sizes = [template[k].numel() for k in ks]
        device = template[ks[0]].device
        buf = torch.zeros((rows, sum(sizes)), dtype=dtype, device=device)
        for j, sd in mine.items():
            buf[j // W] = torch.cat([sd[k].reshape(-1) for k in ks])
        parts = [torch.empty_like(buf) for _ in range(W)]
        dist.all_gather(parts, buf)
        for j in range(n):
            flat = parts[j % W][j // W]
            for k, piece in zip(ks, torch.split(flat, sizes)):
                out[j][k] = piece.view_as(template[k]).clone()
    return [{k: sd[k] for k in keys} for sd in out]


def gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    box: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(box, obj)
    return box


def merge_in_job_order(ctx: DistContext, n: int, per_rank: Sequence[Sequence[Any]]) -> list[Any]:
    """Interleave per-rank lists (rank r holds jobs r, r+W, ...) back into job order."""
    return [per_rank[j % ctx.world_size][j // ctx.world_size] for j in range(n)]
