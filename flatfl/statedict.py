"""Arithmetic on model state dicts (name -> tensor), the currency between server and clients.

Floating-point entries take part in averaging and mutation; integer entries (BatchNorm's
``num_batches_tracked``) are averaged then truncated, as the FedMut reference code's
``load_state_dict`` of a float mean into an integer buffer does, and are never mutated.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

StateDict = dict[str, torch.Tensor]


def clone(sd: StateDict) -> StateDict:
    """Detached, contiguous copies (safe to keep while the model trains on)."""
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def to_device(sd: StateDict, device: torch.device | str) -> StateDict:
    return {k: v.to(device) for k, v in sd.items()}


def weighted_average(states: Sequence[StateDict], weights: Sequence[float]) -> StateDict:
    """sum_i w_i * s_i / sum_i w_i per entry, accumulated in float64, cast back to each dtype.

    ``weights`` are sample counts for FedAvg's weighted mean (McMahan et al. 2017) or all
    ones for the plain mean used by the FedMut reference code.
    """
    if not states:
        raise ValueError("no states to average")
    if len(states) != len(weights):
        raise ValueError("one weight per state expected")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must sum to a positive number")
    out: StateDict = {}
    for k, ref in states[0].items():
        acc = torch.zeros(ref.shape, dtype=torch.float64, device=ref.device)
        for s, w in zip(states, weights):
            acc.add_(s[k].to(torch.float64), alpha=float(w))
        acc.div_(total)
        out[k] = acc.to(ref.dtype) if ref.is_floating_point() else acc.trunc().to(ref.dtype)
    return out


def is_finite(sd: StateDict) -> bool:
    """True when every floating-point entry is free of NaN and inf.

    One fused check: max|x| per tensor (``_foreach_norm`` with ord=inf, the kernel
    ``clip_grad_norm_`` uses) is finite iff the tensor is, NaN propagating; one host sync.
    """
    by_dtype: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for v in sd.values():
        if v.is_floating_point() and v.numel():
            by_dtype.setdefault((v.dtype, v.device), []).append(v)
    return all(
        bool(torch.isfinite(torch.stack(torch._foreach_norm(ts, float("inf")))).all()) for ts in by_dtype.values()
    )


def first_nonfinite(sd: StateDict) -> str | None:
    """Name of the first floating-point entry holding NaN/inf, or None."""
    if is_finite(sd):
        return None
    for k, v in sd.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            return k
    return None
