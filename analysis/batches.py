"""Batches of any shape: the (x, y) pairs of a vision DataLoader, dicts of a HuggingFace-style loader, tuples
of several inputs.

A batch is a nest of tuples, lists and dicts whose leaves are tensors (anything else is carried along
unchanged). Every tensor leaf is assumed to hold the batch's examples along its first dimension; the number
of examples is that of the targets. These helpers map over the nest without knowing its shape.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

Batch = Any


def tree_map(fn: Callable[[torch.Tensor], Any], batch: Batch) -> Batch:
    """``fn`` applied to every tensor of ``batch``; tuples (named ones too), lists and dicts rebuilt around it."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, dict):
        return type(batch)((k, tree_map(fn, v)) for k, v in batch.items())
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(tree_map(fn, v) for v in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(tree_map(fn, v) for v in batch)
    return batch


def tensors(batch: Batch) -> list[torch.Tensor]:
    """Every tensor leaf of ``batch``, in order."""
    out: list[torch.Tensor] = []
    tree_map(out.append, batch)
    return out


def to(batch: Batch, device: torch.device, dtype: torch.dtype | None = None) -> Batch:
    """``batch`` on ``device``; floating-point tensors also cast to ``dtype`` (integer labels, token ids and
    masks keep theirs). Tensors already there are returned as they are (no copy)."""

    def move(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point() and dtype is not None:
            return t.to(device, dtype)
        return t.to(device)

    return tree_map(move, batch)


def count(targets: Batch) -> int:
    """Number of examples: the first dimension of the first tensor of ``targets`` (1 for a 0-d tensor)."""
    ts = tensors(targets)
    if not ts:
        raise ValueError("the targets of a batch hold no tensor; pass targets=... to say where they are")
    t = ts[0]
    return int(t.shape[0]) if t.ndim else 1


def nbytes(batch: Batch) -> int:
    return sum(t.numel() * t.element_size() for t in tensors(batch))


def slice_batch(batch: Batch, start: int, stop: int) -> Batch:
    """Examples ``start:stop`` of ``batch`` (every tensor sliced along its first dimension)."""
    return tree_map(lambda t: t[start:stop] if t.ndim else t, batch)


def concat(batches: Sequence[Batch]) -> Batch:
    """The batches joined along the first dimension (they must share one structure and trailing shapes)."""
    first = batches[0]
    if isinstance(first, torch.Tensor):
        try:
            return torch.cat(list(batches))
        except RuntimeError as e:
            raise ValueError(f"batches cannot be joined (different shapes?): {e}") from None
    if isinstance(first, dict):
        return type(first)((k, concat([b[k] for b in batches])) for k in first)
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*(concat([b[i] for b in batches]) for i in range(len(first))))
    if isinstance(first, (tuple, list)):
        return type(first)(concat([b[i] for b in batches]) for i in range(len(first)))
    return first


def split(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) tensors as (x_i, y_i) batches of ``batch_size`` examples (the last may be smaller)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if len(x) != len(y):
        raise ValueError(
            f"data=(x, y): x holds {len(x)} examples but y {len(y)}; "
            "pass inputs and targets of the same length (first dimension)"
        )
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size)]


def as_batches(data: Any, batch_size: int) -> Iterable[Batch]:
    """``data`` as batches: a pair ``(x, y)`` of tensors with one first dimension is split by ``batch_size``;
    anything else (a DataLoader, a list of batches, a generator) is taken to yield batches. A pair of tensors
    whose first dimensions differ is refused (it is not two batches: a batch is itself a tuple or dict)."""
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
        and data[0].ndim >= 1
        and data[1].ndim >= 1
    ):
        return split(data[0], data[1], batch_size)
    if isinstance(data, torch.Tensor):
        raise ValueError("data is one tensor; pass (inputs, targets) tensors or an iterable of batches")
    try:
        iter(data)
    except TypeError:
        raise ValueError(f"data must be (x, y) tensors or an iterable of batches, got {type(data).__name__}") from None
    return data
